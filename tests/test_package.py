"""The package's own files: nothing a bad merge leaves behind reaches a user."""

import re
from pathlib import Path

import ingestkit

PACKAGE = Path(ingestkit.__file__).parent
MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def test_no_merge_conflict_marker_in_the_package():
    """A stray ``=======`` in queries.sql once broke the lease query, silently."""
    files = [p for p in PACKAGE.rglob("*") if p.suffix in {".py", ".sql", ".j2"}]
    assert files
    marked = [str(p.relative_to(PACKAGE)) for p in files if MARKER.search(p.read_text("utf-8"))]
    assert marked == []


def test_every_named_query_is_one_block_of_sql():
    from ingestkit.queries import q

    text = (PACKAGE / "sql" / "queries.sql").read_text("utf-8")
    names = re.findall(r"^-- name: (\S+)$", text, re.MULTILINE)
    assert len(names) == len(set(names)), "a query name is defined twice"
    for name in names:
        assert q(name).strip(), name
