"""``@ingestkit.source``, keys, and turning any source into a stream of entries.

An *entry* is one record as the runner sees it: the record itself, where it came
from (for messages) and, when it could not be read, the error instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .outcomes import RecordError

SOURCE_ATTR = "_ingestkit_source"


@dataclass(slots=True)
class Entry:
    record: Any
    location: str  # "data/x.csv:7", "record 12"
    error: str | None = None  # set when the record could not be read
    key: str | None = None  # set by sources that know it (e.g. --lf)
    attempt: int = 1
    previous_error: str | None = None
    content_hash: str | None = None  # known already (stored with a failed item)
    flat: bool = False  # the record is a dict of str (read_csv): hashed without checks
    rerun: bool = False  # re-fed by --lf/--ff: the source's copy of this key is skipped


@dataclass
class SourceSpec:
    """What ``@ingestkit.source`` attached to a processor function."""

    src: Any
    key: Any
    declared_in: Path  # directory of the declaring file: relative paths resolve here


def source(src: Any, key: Any = None) -> Callable:
    """Declare where a processor's records come from, and how each is keyed.

    ``src`` is an iterable, a callable returning one (its parameters are
    fixtures), or a built-in reader. ``key`` is a field name, a tuple of field
    names (joined with ``|``), a callable ``record -> str``, or ``None`` for the
    1-based position in the source.
    """

    def decorate(func: Callable) -> Callable:
        filename = getattr(getattr(func, "__code__", None), "co_filename", None)
        declared_in = Path(filename).parent if filename else Path.cwd()
        setattr(func, SOURCE_ATTR, SourceSpec(src, key, declared_in))
        return func

    return decorate


class Reader:
    """Base of the built-in readers: iterable as plain records, and as entries.

    Subclasses implement :meth:`entries`; relative paths resolve against the
    directory of the file that declared the source.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def resolve(self, base: Path | None) -> Path:
        """The file to read, shown relative to the current directory when below it."""
        path = self.path if self.path.is_absolute() or base is None else base / self.path
        path = Path(os.path.normpath(path.absolute()))
        try:
            return path.relative_to(Path.cwd())
        except ValueError:
            return path

    def entries(self, base: Path | None = None) -> Iterator[Entry]:  # pragma: no cover
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        for entry in self.entries():
            if entry.error is not None:
                raise RecordError(entry.error)
            yield entry.record

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def iter_entries(src: Any, base: Path | None) -> Iterator[Entry]:
    """Entries of an already-made source: a Reader or any iterable."""
    if isinstance(src, Reader):
        yield from src.entries(base)
        return
    if isinstance(src, (str, bytes)):
        raise TypeError(f"a source must be an iterable of records, not {type(src).__name__}")
    for position, record in enumerate(src, 1):
        yield Entry(record, f"record {position}")


def make_keyfunc(key: Any) -> Callable[[Any, int], str]:
    """Turn ``key=`` into ``f(record, position) -> str``; raises RecordError."""
    if key is None:
        return lambda record, position: str(position)
    if callable(key):

        def by_callable(record: Any, position: int) -> str:
            value = key(record)
            if value is None:
                raise RecordError("the key function returned None")
            return str(value)

        return by_callable
    if isinstance(key, str):
        return _by_field(key)
    if isinstance(key, (tuple, list)) and key and all(isinstance(f, str) for f in key):
        fields = tuple(key)
    else:
        raise TypeError(f"key= must be a field name, a tuple of them, a callable or None: {key!r}")

    def by_fields(record: Any, position: int) -> str:
        try:
            values = [record[f] for f in fields]
        except (KeyError, IndexError, TypeError):
            missing = [f for f in fields if not _has(record, f)]
            names = ", ".join(repr(f) for f in missing) or repr(fields)
            raise RecordError(f"record has no key field {names}") from None
        if any(v is None or v == "" for v in values):
            empty = [f for f, v in zip(fields, values, strict=True) if v is None or v == ""]
            raise RecordError(f"key field {', '.join(map(repr, empty))} is empty")
        return "|".join(str(v) for v in values)

    return by_fields


def _by_field(field: str) -> Callable[[Any, int], str]:
    """``key="field"``, the common case: no loop over fields per record."""

    def by_field(record: Any, position: int) -> str:
        try:
            value = record[field]
        except (KeyError, IndexError, TypeError):
            raise RecordError(f"record has no key field {field!r}") from None
        if value is None or value == "":
            raise RecordError(f"key field {field!r} is empty")
        return value if type(value) is str else str(value)

    return by_field


def _has(record: Any, field: str) -> bool:
    try:
        record[field]
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def to_json(record: Any) -> str:
    """The record as JSON text, converting non-JSON values explicitly (never pickle)."""
    return json.dumps(record, default=_json_default, ensure_ascii=False, separators=(",", ":"))


_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


def content_hash(record: Any, flat: bool = False) -> str:
    """A stable hash of a record's content ("already ingested" compares it).

    A flat dict of plain values (what the readers yield) is hashed through its
    repr, which is stable and three times cheaper than JSON; anything else
    through its JSON text.
    """
    if flat or (type(record) is dict and _PLAIN_TYPES.issuperset(map(type, record.values()))):
        text = repr(record)
    else:
        text = to_json(record)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
