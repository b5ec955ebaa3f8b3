"""Python values to PostgreSQL COPY text format (the fast path of ``db.insert``).

The built-in types are written natively, as psycopg2 would adapt them. Any
other value (an ``Enum``, a ``str`` subclass, a type with a registered
psycopg2 adapter) goes through psycopg2's adapters, as ``db.execute`` does,
when ``db.insert`` receives it (:func:`adapt_row`): both paths store the same
text, and a value psycopg2 cannot adapt fails the item, naming its column.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import psycopg2
from psycopg2.extensions import QuotedString, register_adapter
from psycopg2.extras import Json

#: Addresses and networks, as text (``inet``/``cidr`` input). psycopg2 has no
#: adapter for them by default: this one serves ``db.execute`` as well.
IP_TYPES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
)
for _kind in IP_TYPES:
    register_adapter(_kind, lambda value: QuotedString(str(value)))


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


class Adapted:
    """A value's PostgreSQL input text, as psycopg2's adapters gave it (see :func:`adapt_row`)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(_array_element(v) for v in value) + "}"
    text = value if type(value) is str else _plain(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain(value: Any) -> str:
    """A non-None value as PostgreSQL input text (before COPY escaping)."""
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, (int, float, decimal.Decimal, uuid.UUID, *IP_TYPES)):
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
    if type(value) is Adapted:
        return value.text
    raise psycopg2.ProgrammingError(f"can't adapt type {type(value).__name__!r}")


NULL = "\\N"

#: Exact types written natively (``list`` and ``tuple``: if their elements are).
NATIVE = frozenset(
    {
        type(None),
        str,
        int,
        float,
        bool,
        decimal.Decimal,
        uuid.UUID,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        bytes,
        bytearray,
        memoryview,
        Json,
        dict,
        *IP_TYPES,
    }
)
_QUOTED = re.compile(r"\s*(E?)'((?:[^']|'')*)'(?:::[\w .\[\]\"]+)?\s*", re.S)
_BARE = re.compile(r"\s*(-?[0-9][0-9.eE+-]*|true|false)\s*")


def _native(value: Any) -> bool:
    kind = type(value)
    if kind is list or kind is tuple:
        return all(_native(v) for v in value)
    return kind in NATIVE


def adapt_row(
    row: dict[str, Any],
    mogrify: Callable[[Any], bytes],
    evaluate: Callable[[Any], str | None],
    table: str,
) -> dict[str, Any]:
    """``row`` with each value COPY does not write natively turned into an :class:`Adapted`.

    ``mogrify`` gives psycopg2's SQL literal of a value (``cursor.mogrify``);
    a literal that is not a plain constant (``ARRAY[...]``, a function call) is
    given to ``evaluate``, which asks the server for its text. A value psycopg2
    cannot adapt raises ``psycopg2.ProgrammingError`` naming column and table.
    """
    adapted = dict(row)
    for column, value in row.items():
        if not _native(value):
            try:
                adapted[column] = _adapt(value, mogrify, evaluate)
            except psycopg2.ProgrammingError as exc:
                raise psycopg2.ProgrammingError(
                    f"{exc} (column {column!r} of db.insert into {table!r})"
                ) from None
    return adapted


def _adapt(value: Any, mogrify: Callable[..., Any], evaluate: Callable[..., Any]) -> Any:
    kind = type(value)
    if kind is list or kind is tuple:  # COPY's own arrays, element by element
        return kind(v if _native(v) else _adapt(v, mogrify, evaluate) for v in value)
    if kind in NATIVE:
        return value
    literal = mogrify(value).decode("utf-8")
    if literal == "NULL":
        return None
    quoted = _QUOTED.fullmatch(literal)
    if quoted:
        text = quoted[2].replace("''", "'")
        return Adapted(text.replace("\\\\", "\\") if quoted[1] else text)
    bare = _BARE.fullmatch(literal)
    if bare:
        return Adapted(bare[1])
    text = evaluate(value)
    return None if text is None else Adapted(text)


#: Types whose text never needs COPY escaping, by exact type (the fast path).
_SAFE: dict[type, Callable[[Any], str]] = {
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


def copy_rows(rows: list[tuple[Any, ...]], errors: str = "strict") -> bytes:
    """Rows of values as one COPY text payload.

    With ``errors="strict"`` a lone surrogate raises UnicodeEncodeError;
    ``"replace"`` writes ``?`` instead (for ingestkit's own rows).
    """
    lines = ["\t".join([copy_field(v) for v in row]) + "\n" for row in rows]
    return "".join(lines).encode("utf-8", errors)
