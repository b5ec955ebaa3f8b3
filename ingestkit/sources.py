"""``@ingestkit.source``, keys, and turning any source into a stream of entries.

An *entry* is one record as the runner sees it: the record itself, where it came
from (for messages) and, when it could not be read, the error instead.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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


_F = TypeVar("_F", bound=Callable[..., Any])


def source(src: Any, key: Any = None) -> Callable[[_F], _F]:
    """Declare where a processor's records come from, and how each is keyed.

    ``src`` is an iterable, a callable returning one (its parameters are
    fixtures), or a built-in reader. ``key`` is a field name, a tuple of field
    names (joined with ``|``), a callable ``record -> str``, or ``None`` for the
    1-based position in the source.
    """

    def decorate(func: _F) -> _F:
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
            value = str(value)
            if not value:
                raise RecordError("the key function returned an empty key ''")
            return value

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
        try:
            text = to_json(record)
        except RecursionError:
            raise RecordError(_TOO_DEEP) from None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


_TOO_DEEP = (
    "the record is nested too deeply (about a thousand levels) to be hashed or stored: "
    "flatten it in the source"
)


# -- text PostgreSQL cannot hold: keys and payloads ---------------------------

#: The first character of a stored key that is escaped (see :func:`storable_key`).
KEY_ESCAPE = "\\"
#: The member naming a tagged value in a stored payload (see :func:`to_payload`).
TAG = "$ingestkit"
_ESCAPES = re.compile(r"\\(\\|x00|u[dD][89a-fA-F][0-9a-fA-F]{2})")


def _unstorable(text: str) -> bool:
    """Whether PostgreSQL text cannot hold ``text`` (a NUL or a lone surrogate)."""
    if "\0" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escape_text(text: str) -> str:
    """``text`` with ``\\`` doubled, NUL as ``\\x00`` and each lone surrogate as
    ``\\udXXX``: text PostgreSQL can hold, undone by :func:`unescape_text`."""
    out = text.replace("\\", "\\\\").replace("\0", "\\x00")
    if not out.isascii():
        out = "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in out)
    return out


def unescape_text(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        return "\\" if code == "\\" else "\0" if code == "x00" else chr(int(code[1:], 16))

    return _ESCAPES.sub(one, text)


def storable_key(key: str) -> str:
    """The text form of a key in ``ingestkit.items.key``, node ids and history.

    A key PostgreSQL text can hold is itself. One holding a NUL or a lone
    surrogate, or starting with ``\\``, is ``\\`` followed by
    :func:`escape_text` of it, so that no two keys share a text form:
    ``"a\\0b"`` is stored as ``\\a\\x00b``.
    """
    if key.startswith(KEY_ESCAPE) or _unstorable(key):
        return KEY_ESCAPE + escape_text(key)
    return key


def original_key(stored: str) -> str:
    """The key whose text form :func:`storable_key` gave ``stored``."""
    return unescape_text(stored[1:]) if stored.startswith(KEY_ESCAPE) else stored


class Unreplayable(Exception):
    """A stored payload that does not give back the record that was read."""


def _tag(kind: str, value: Any) -> dict[str, Any]:
    return {TAG: kind, "value": value}


def _tagged(value: Any) -> Any:
    """``value`` as JSON values PostgreSQL jsonb holds exactly (tags for the rest)."""
    kind = type(value)
    if kind is str:
        return _tag("str", escape_text(value)) if _unstorable(value) else value
    if value is None or kind is bool or kind is int:
        return value
    if kind is float:
        text = repr(value)
        # jsonb keeps numbers as numeric: no NaN/Infinity, no -0, and 1e+16 comes back an int
        if not math.isfinite(value) or ("e" in text and abs(value) >= 1) or text == "-0.0":
            return _tag("float", text)
        return value
    if kind is dict:
        return _tagged_dict(value)
    if kind is list:
        return [_tagged(v) for v in value]
    return _tagged_python(kind, value)


def _tagged_dict(value: dict[Any, Any]) -> Any:
    """A dict as a JSON object, or tagged as key/value pairs when its keys cannot be."""
    if TAG not in value and all(type(k) is str and not _unstorable(k) for k in value):
        return {k: _tagged(v) for k, v in value.items()}
    return _tag("dict", [[_tagged(k), _tagged(v)] for k, v in value.items()])


def _tagged_python(kind: type, value: Any) -> Any:
    """A value of a type JSON has not, tagged with the type's name."""
    if kind is tuple:
        return _tag("tuple", [_tagged(v) for v in value])
    if kind in (set, frozenset):
        return _tag(kind.__name__, [_tagged(v) for v in sorted(value, key=repr)])
    if kind in (bytes, bytearray):
        return _tag(kind.__name__, base64.b64encode(value).decode("ascii"))
    if kind in (datetime.datetime, datetime.date, datetime.time):
        return _tag(kind.__name__, value.isoformat())
    if kind is datetime.timedelta:
        return _tag("timedelta", [value.days, value.seconds, value.microseconds])
    if kind is decimal.Decimal:
        return _tag("decimal", str(value))
    if kind is uuid.UUID:
        return _tag("uuid", str(value))
    name = f"{kind.__module__}.{kind.__qualname__}"
    return {TAG: "unreplayable", "type": name, "value": _tagged(str(value))}

_UNTAG: dict[str, Callable[[Any], Any]] = {
    "str": unescape_text,
    "float": float,
    "tuple": lambda v: tuple(_untagged(x) for x in v),
    "set": lambda v: {_untagged(x) for x in v},
    "frozenset": lambda v: frozenset(_untagged(x) for x in v),
    "bytes": base64.b64decode,
    "bytearray": lambda v: bytearray(base64.b64decode(v)),
    "datetime": datetime.datetime.fromisoformat,
    "date": datetime.date.fromisoformat,
    "time": datetime.time.fromisoformat,
    "timedelta": lambda v: datetime.timedelta(*v),
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
}


def _untagged(value: Any) -> Any:
    if type(value) is list:
        return [_untagged(v) for v in value]
    if type(value) is not dict:
        return value
    kind = value.get(TAG)
    if kind is None:
        return {k: _untagged(v) for k, v in value.items()}
    if kind == "dict":
        return {_untagged(k): _untagged(v) for k, v in value["value"]}
    if kind == "unreplayable":
        raise Unreplayable(f"it held a {value['type']}, which ingestkit cannot store as such")
    if kind == "unstorable":
        raise Unreplayable(value["value"])
    return _UNTAG[kind](value["value"])


_FLAT_TYPES = frozenset({str, int, bool, type(None)})
_STR_TYPE = frozenset({str})


def _flat_encoder() -> Callable[[dict[str, Any]], str]:
    """``json.dumps(d, ensure_ascii=False, separators=(",", ":"))`` for a flat dict
    of str/int/bool/None, made once: ``dumps`` builds an encoder on every call
    (half its cost on a reader's row). A flat dict cannot be circular or hold a
    float, so the encoder checks neither."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (not CPython)
        encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
        return encoder.encode
    encode = make(None, None, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    return lambda record: "".join(encode(record, 0))


_dump_flat = _flat_encoder()


def to_payload(record: Any) -> str:
    """The record as JSON text that PostgreSQL jsonb holds exactly.

    JSON values are themselves, except strings with a NUL or a lone surrogate.
    Those, non-finite and large floats, dicts whose keys are not plain strings,
    and values JSON has no type for (tuple, set, bytes, date, datetime, time,
    timedelta, Decimal, UUID) become ``{"$ingestkit": TYPE, "value": ...}``,
    which :func:`from_payload` turns back into the very value. Any other
    object is stored as its ``str()`` and cannot be replayed.
    """
    if (
        type(record) is dict
        and _FLAT_TYPES.issuperset(map(type, record.values()))
        and TAG not in record
        and _STR_TYPE.issuperset(map(type, record))
    ):  # the common case, a dict of strings and ints: one C-speed dump and two checks
        text = _dump_flat(record)
        if "\\u0000" not in text and not _unstorable(text):
            return text
    try:
        tagged = _tagged(record)
        return json.dumps(tagged, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        why = _TOO_DEEP
    except ValueError as exc:  # e.g. an int with more digits than str() allows
        why = f"the record could not be stored: {exc}"
    return json.dumps({TAG: "unstorable", "value": why})


def from_payload(payload: Any) -> Any:
    """The record a stored payload (as parsed JSON) holds; raises Unreplayable."""
    try:
        return _untagged(payload)
    except Unreplayable:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise Unreplayable(f"its stored form is damaged ({type(exc).__name__}: {exc})") from None
