"""Named SQL blocks from ``sql/queries.sql`` (one place for every query)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.M)


def read_sql(name: str) -> str:
    return resources.files("ingestkit").joinpath("sql", name).read_text("utf-8")


@cache
def queries() -> dict[str, str]:
    text = read_sql("queries.sql")
    parts = _NAME.split(text)
    return {parts[i]: parts[i + 1].strip().rstrip(";") for i in range(1, len(parts), 2)}


def q(name: str) -> str:
    """The query called ``name`` in ``queries.sql``."""
    return queries()[name]
