"""Memory stays flat whatever the input (issue 11 #9; SPEC §1: readers stream).

Chunks are bounded by bytes as well as by count, and the duplicate-key check
moves to the database past a fixed number of keys.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import ingestkit.keyset


def test_duplicates_are_found_after_the_key_set_spills_to_the_database(project, monkeypatch):
    monkeypatch.setattr(ingestkit.keyset, "MEMORY_KEYS", 64)
    keys = list(range(1, 1001)) + [5, 500, 999, 1000]  # duplicates of early and late keys
    project.write(
        "ingest_x.py",
        f"""
import ingestkit

@ingestkit.source([{{"id": k}} for k in {keys!r}], key="id")
def process_row(record, db):
    db.insert("t", {{"id": record["id"]}})

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int)")
""",
    )
    result = project.run("--chunk-size", "50")
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 1000, "failed": 4}
    assert sorted(r["key"] for r in result.items if r["error_type"] == "DuplicateKey") == [
        "1000",
        "5",
        "500",
        "999",
    ]
    assert project.scalar("SELECT count(DISTINCT id) FROM t") == 1000
    assert project.scalar("SELECT count(*) FROM t") == 1000


def test_keyset_in_memory_and_in_the_database_agree(project):
    import psycopg2

    conn = psycopg2.connect(project.dsn)
    conn.autocommit = True
    try:
        memory, spilled = ingestkit.keyset.KeySet(), ingestkit.keyset.KeySet(spill=conn)
        spilled._move_to_database()
        keys = [str(i % 700) for i in range(2000)] + ["\u00e9", "", "a" * 1000]
        for start in range(0, len(keys), 97):
            chunk = keys[start : start + 97]
            assert memory.add_all(chunk) == spilled.add_all(chunk)
    finally:
        conn.close()


@pytest.mark.slow
def test_peak_memory_with_large_records_stays_flat(project):
    """100 KB records: chunks hold a few dozen of them, not thousands."""
    rows = 3000
    with open(project.root / "big.csv", "w") as f:
        f.write("id,blob\n")
        for i in range(1, rows + 1):
            f.write(f"{i},{'x' * 100_000}\n")
    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int, blob text)")

@ingestkit.source(ingestkit.read_csv("big.csv"), key="id")
def process_row(record, db):
    db.insert("t", {"id": int(record["id"]), "blob": record["blob"]})
""",
    )
    code = (
        "import resource, sys\n"
        "from ingestkit.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('peak-kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "--dsn", project.dsn, "-q"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    peak_mb = int(out.stdout.split("peak-kb")[1].split()[0]) / 1024
    # 300 MB of records went through; the process never holds more than a few chunks
    print(f"peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 150, f"peak RSS {peak_mb:.0f} MB"
    assert project.scalar("SELECT count(*) FROM t") == rows
