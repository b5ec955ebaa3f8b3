"""Python values to PostgreSQL COPY text format (the fast path of ``db.insert``)."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

from psycopg2.extras import Json


def _escape(text: str) -> str:
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(_array_element(v) for v in value) + "}"
    text = value if isinstance(value, str) else _plain(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain(value: Any) -> str:
    """A non-None value as PostgreSQL input text (before COPY escaping)."""
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, (int, float, decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return f"{value.total_seconds()} seconds"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, Json):
        return json.dumps(value.adapted, default=str)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(_array_element(v) for v in value) + "}"
    return str(value)


NULL = "\\N"


#: Types whose text never needs COPY escaping, by exact type (the fast path).
_SAFE: dict[type, Any] = {
    int: str,
    float: repr,
    decimal.Decimal: str,
    uuid.UUID: str,
    datetime.date: datetime.date.isoformat,
    datetime.datetime: datetime.datetime.isoformat,
    bool: lambda v: "t" if v else "f",
}


def copy_field(value: Any) -> str:
    if value is None:
        return NULL
    kind = type(value)
    if kind is str:
        return _escape(value)
    safe = _SAFE.get(kind)
    if safe is not None:
        return safe(value)
    return _escape(_plain(value))


def copy_rows(rows: list[tuple], errors: str = "strict") -> bytes:
    """Rows of values as one COPY text payload.

    With ``errors="strict"`` a lone surrogate raises UnicodeEncodeError;
    ``"replace"`` writes ``?`` instead (for ingestkit's own rows).
    """
    lines = ["\t".join([copy_field(v) for v in row]) + "\n" for row in rows]
    return "".join(lines).encode("utf-8", errors)
