"""Typed records (SPEC §7): a processor's ``record: Model`` annotation.

The model is worked out once per processor (:func:`model_for`): a dataclass
becomes a list of compiled per-field converters, a pydantic v2 model is
validated by pydantic itself. Each item's raw record is then converted with
:meth:`RecordModel.convert`; a record that does not convert raises
:class:`RecordInvalid` listing every bad field.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import inspect
import re
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pydantic import BaseModel

PIP_PYDANTIC = "pip install 'ingestkit[pydantic]'"
_MISSING = object()
_INT = re.compile(r"\s*[+-]?\d+\s*")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


class RecordInvalid(ValueError):
    """A record did not convert to its processor's model; the item is an ``error``."""


class MissingColumns(RecordInvalid):
    """A CSV file's header lacks columns that the model requires."""


class ModelError(TypeError):
    """The ``record`` annotation cannot be used as a model (fails the processor)."""


class _Bad(Exception):
    """One field's value did not convert: ``reason`` (e.g. ``is not an integer``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def where(location: str) -> str:
    """``data/x.csv:103`` as ``data/x.csv, line 103`` (how readers name a line)."""
    path, sep, line = location.rpartition(":")
    if sep and line.isdigit() and path:
        return f"{path}, line {line}"
    return location


# -- converters: value -> value, raising _Bad ------------------------------------


def _to_str(v: Any) -> Any:
    if isinstance(v, str):
        return v
    raise _Bad("is not a string")


def _to_int(v: Any) -> Any:
    kind = type(v)
    if kind is int:
        return v
    if kind is str and ((v.isascii() and v.isdigit()) or _INT.fullmatch(v)):
        return int(v)
    if kind is float and v.is_integer():
        return int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return int(v)
    raise _Bad("is not an integer")


def _to_float(v: Any) -> Any:
    kind = type(v)
    if kind is float:
        return v
    if kind is int:
        return float(v)
    if kind is str:
        try:
            return float(v)
        except ValueError:
            pass
    elif isinstance(v, decimal.Decimal):
        return float(v)
    raise _Bad("is not a number")


def _to_decimal(v: Any) -> Any:
    kind = type(v)
    if kind is decimal.Decimal:
        return v
    if kind is str:
        try:
            return decimal.Decimal(v.strip())
        except decimal.InvalidOperation:
            pass
    elif kind is int:
        return decimal.Decimal(v)
    elif kind is float:
        return decimal.Decimal(repr(v))
    raise _Bad("is not a decimal number")


def _to_bool(v: Any) -> Any:
    if v is True or v is False:
        return v
    if isinstance(v, str):
        word = v.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    elif type(v) is int and v in (0, 1):
        return bool(v)
    raise _Bad("is not a boolean (true/false/t/f/yes/no/y/n/1/0)")


def _iso(kind: type[datetime.date | datetime.time], what: str) -> Callable[[Any], Any]:
    parse = kind.fromisoformat

    def convert(v: Any) -> Any:
        if type(v) is kind:
            return v
        if isinstance(v, str):
            try:
                return parse(v.strip())
            except ValueError:
                pass
        raise _Bad(f"is not an ISO 8601 {what}")

    return convert


def _to_uuid(v: Any) -> Any:
    if isinstance(v, uuid.UUID):
        return v
    if isinstance(v, str):
        try:
            return uuid.UUID(v.strip())
        except ValueError:
            pass
    raise _Bad("is not a UUID")


def _to_enum(cls: type[enum.Enum]) -> Callable[[Any], Any]:
    members = list(cls)
    by_text = {str(m.value): m for m in members}
    choices = ", ".join(repr(m.value) for m in members)

    def convert(v: Any) -> Any:
        if isinstance(v, cls):
            return v
        try:
            return cls(v)
        except (ValueError, TypeError):
            pass
        if isinstance(v, str) and v.strip() in by_text:
            return by_text[v.strip()]
        raise _Bad(f"is not a {cls.__name__} (one of {choices})")

    return convert


def _pass(v: Any) -> Any:
    return v


_CONVERTERS: dict[Any, Callable[[Any], Any]] = {
    str: _to_str,
    int: _to_int,
    float: _to_float,
    decimal.Decimal: _to_decimal,
    bool: _to_bool,
    datetime.datetime: _iso(datetime.datetime, "datetime"),
    datetime.date: _iso(datetime.date, "date"),
    datetime.time: _iso(datetime.time, "time"),
    uuid.UUID: _to_uuid,
}


#: converters whose str case is just this parse (used inline by compiled models)
_INLINE: dict[Any, Callable[[str], Any]] = {
    _to_int: int,
    _to_float: float,
    _to_decimal: decimal.Decimal,
    _CONVERTERS[datetime.datetime]: datetime.datetime.fromisoformat,
    _CONVERTERS[datetime.date]: datetime.date.fromisoformat,
    _CONVERTERS[datetime.time]: datetime.time.fromisoformat,
}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) < len(args):
            return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return tp, False


def converter_for(tp: Any) -> Callable[[Any], Any]:
    """The converter for a (non-optional) field type; others pass values through."""
    if tp in _CONVERTERS:
        return _CONVERTERS[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _to_enum(tp)
    return _pass


# -- models ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    """One dataclass field: where it reads from and how it converts."""

    name: str
    column: str
    convert: Callable[[Any], Any]
    optional: bool  # X | None: '' or a missing column is None
    has_default: bool
    text: bool  # a str field keeps '' as ''

    @property
    def required(self) -> bool:
        return not (self.optional or self.has_default)


class RecordModel:
    """How raw records become instances of one model class."""

    cls: type

    def convert(self, raw: Any, location: str) -> Any:
        raise NotImplementedError

    def required_columns(self) -> list[str]:
        """Columns a file must have (fields with no default that are not optional)."""
        raise NotImplementedError

    def check_header(self, header: list[str], path: str) -> None:
        """Raise :class:`MissingColumns` when ``header`` lacks required columns."""
        have = set(header)
        missing = [c for c in self.required_columns() if c not in have]
        if missing:
            raise MissingColumns(
                f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} required by {self.cls.__name__}; "
                f"the header has: {', '.join(header) or '(nothing)'}"
            )


class _Converter(Protocol):
    def __call__(self, raw: Any, location: str) -> Any: ...


class DataclassModel(RecordModel):
    """A dataclass, converted field by field with compiled converters."""

    def __init__(self, cls: type, hints: dict[str, Any]) -> None:
        self.cls = cls
        fields = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            tp, optional = _unwrap_optional(hints.get(f.name, Any))
            fields.append(
                Field(
                    f.name,
                    str(f.metadata.get("column", f.name)),
                    converter_for(tp),
                    optional,
                    f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING,
                    tp is str,
                )
            )
        self.fields = fields
        self.convert = self._compile()  # type: ignore[method-assign]  # per instance, compiled

    def required_columns(self) -> list[str]:
        return [f.column for f in self.fields if f.required]

    def _compile(self) -> _Converter:
        """One function converting a dict record with all the model's fields inlined;
        anything unusual (a bad value, a missing required column, not a dict) goes
        to :meth:`_convert`, which says what is wrong."""
        env: dict[str, Any] = {"M": _MISSING, "Bad": _Bad, "slow": self._convert}
        env["cls"] = self.cls
        body = ["def convert(raw, location):"]
        body.append("    if raw.__class__ is not dict:")
        body.append("        return slow(raw, location)")
        body.append("    get = raw.get")
        body.append("    kw = {}")
        body.append("    try:")
        for i, f in enumerate(self.fields):
            env[f"c{i}"] = f.convert
            empty = "v is M or v is None"
            if f.optional or not f.text:
                empty += ' or v == ""'
            inline = _INLINE.get(f.convert)
            if f.convert is _to_str:
                value = f"v if v.__class__ is str else c{i}(v)"
            elif inline is not None:  # the parse itself for a str; a failure goes slow
                env[f"p{i}"] = inline
                value = f"p{i}(v) if v.__class__ is str else c{i}(v)"
            elif f.convert is _pass:
                value = "v"
            else:
                value = f"c{i}(v)"
            body.append(f"        v = get({f.column!r}, M)")
            if f.has_default:
                body.append(f"        if not ({empty}):")
                body.append(f"            kw[{f.name!r}] = {value}")
            elif f.optional:
                body.append(f"        kw[{f.name!r}] = None if {empty} else {value}")
            else:
                body.append(f"        if {empty}:")
                body.append("            return slow(raw, location)")
                body.append(f"        kw[{f.name!r}] = {value}")
        body.append("    except Exception:")
        body.append("        return slow(raw, location)")
        body.append("    try:")
        body.append("        return cls(**kw)")
        body.append("    except Exception:")
        body.append("        return slow(raw, location)")
        # named after this file: a traceback through it is ingestkit's, not the user's
        code = compile("\n".join(body), __file__, "exec")
        exec(code, env)  # noqa: S102 - code made here, from field names only
        convert: _Converter = env["convert"]
        return convert

    def convert(self, raw: Any, location: str) -> Any:  # replaced by _compile()
        return self._convert(raw, location)

    def _convert(self, raw: Any, location: str) -> Any:
        if isinstance(raw, self.cls):
            return raw
        if not isinstance(raw, Mapping):
            raise RecordInvalid(
                f"{where(location)}: expected a record with named fields for "
                f"{self.cls.__name__}, got {type(raw).__name__}"
            )
        kwargs: dict[str, Any] = {}
        bad: list[str] = []
        get = raw.get
        for f in self.fields:
            try:
                value = _field_value(f, get(f.column, _MISSING))
            except _FieldInvalid as exc:
                bad.append(exc.problem)
                continue
            if value is not _MISSING:
                kwargs[f.name] = value
        if bad:
            raise RecordInvalid(f"{where(location)}: " + "; ".join(bad))
        try:
            return self.cls(**kwargs)
        except Exception as exc:  # the model's own checks (__post_init__)
            raise RecordInvalid(f"{where(location)}: {type(exc).__name__}: {exc}") from exc


class _FieldInvalid(Exception):
    """One field of a record cannot be set: ``problem`` names its column and why."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _field_value(f: Field, value: Any) -> Any:
    """Column ``f.column``'s ``value`` converted for field ``f``, or ``_MISSING`` to
    leave the field its default; raises :class:`_FieldInvalid`."""
    if (
        value is _MISSING
        or value is None
        or (value == "" and type(value) is str and (f.optional or not f.text))
    ):
        return _no_value(f, value)
    try:
        return f.convert(value)
    except _Bad as exc:
        raise _FieldInvalid(f"{f.column}: {_shown(value)} {exc.reason}") from None
    except (ValueError, TypeError, ArithmeticError) as exc:  # e.g. too many digits
        raise _FieldInvalid(f"{f.column}: {_shown(value)} is invalid ({exc})") from None


def _no_value(f: Field, value: Any) -> Any:
    """A field whose column is missing, null or empty: its default, None, or invalid."""
    if f.has_default:
        return _MISSING
    if f.optional:
        return None
    if value is _MISSING:
        raise _FieldInvalid(f"{f.column}: missing column")
    reason = "is empty" if value == "" else "is null"
    raise _FieldInvalid(f"{f.column}: {value!r} {reason}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class PydanticModel(RecordModel):
    """A pydantic v2 model: pydantic's own validation, aliases included."""

    cls: type[BaseModel]

    def __init__(self, cls: type[BaseModel]) -> None:
        import pydantic

        self.cls = cls
        self._error = pydantic.ValidationError

    def required_columns(self) -> list[str]:
        columns = []
        for name, info in self.cls.model_fields.items():
            if info.is_required():
                alias = info.validation_alias if isinstance(info.validation_alias, str) else None
                columns.append(alias or info.alias or name)
        return columns

    def convert(self, raw: Any, location: str) -> Any:
        if isinstance(raw, self.cls):
            return raw
        try:
            return self.cls.model_validate(raw)
        except self._error as exc:
            bad = []
            for err in exc.errors(include_url=False):
                column = ".".join(str(p) for p in err.get("loc", ())) or "record"
                if err.get("type") == "missing":
                    bad.append(f"{column}: missing column")
                else:
                    value = err.get("input")
                    msg = err.get("msg", "invalid")
                    bad.append(f"{column}: {_shown(value)} {msg[:1].lower()}{msg[1:]}")
            raise RecordInvalid(f"{where(location)}: " + "; ".join(bad)) from None


def _is_pydantic_class(tp: Any) -> bool:
    return isinstance(tp, type) and any(
        (k.__module__ or "").split(".")[0] == "pydantic" for k in tp.__mro__[1:]
    )


def model_for(func: Callable[..., Any]) -> RecordModel | None:
    """The model of ``func``'s ``record`` parameter, or None when it has no model type.

    Raises :class:`ModelError` (one line) when the annotation cannot be used.
    """
    try:
        param = inspect.signature(func).parameters.get("record")
    except (TypeError, ValueError):
        return None
    if param is None or param.annotation is inspect.Parameter.empty:
        return None
    try:
        tp = typing.get_type_hints(func).get("record", param.annotation)
    except Exception as exc:
        if isinstance(param.annotation, str) and "pydantic" in str(exc):
            raise ModelError(f"record: pydantic is not installed: {PIP_PYDANTIC}") from None
        return None
    tp, _ = _unwrap_optional(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_model(tp)
    if _is_pydantic_class(tp):
        return _pydantic_model(tp)
    return None


def _dataclass_model(tp: type) -> DataclassModel:
    try:
        hints = typing.get_type_hints(tp)
    except Exception as exc:
        raise ModelError(f"record: cannot read the field types of {tp.__name__}: {exc}") from None
    return DataclassModel(tp, hints)


def _pydantic_model(tp: type[BaseModel]) -> PydanticModel:
    if not hasattr(tp, "model_validate"):
        raise ModelError(
            f"record: {tp.__name__} is a pydantic v1 model; typed records need "
            f"pydantic v2: {PIP_PYDANTIC}"
        )
    try:
        return PydanticModel(tp)
    except ImportError:
        raise ModelError(
            f"record: {tp.__name__} needs pydantic, which is not installed: {PIP_PYDANTIC}"
        ) from None
