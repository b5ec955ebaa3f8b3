"""``read_parquet``: Parquet files streamed by row group (pyarrow, extra ``ingestkit[parquet]``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .readers import FileReader, MissingExtra, SourceUnreadable

PIP_PARQUET = "pip install 'ingestkit[parquet]'"

#: Rows converted to Python at a time (a row group may be much larger).
BATCH_ROWS = 8192

#: Batches wider than this make each record with ``dict(zip(...))`` (no code is made).
_MOST_COLUMNS = 256

#: "000" ... "999": the last three digits of a row number (see _places).
_TAILS = [f"{i:03d}" for i in range(1000)]

_Records = Callable[[list[str], list[list[Any]]], list[dict[str, Any]]]


class read_parquet(FileReader):  # noqa: N801 - public API reads like a function
    """Stream the rows of a Parquet file as dicts, a row group at a time.

    Values are as pyarrow's ``to_pylist`` gives them (``int``, ``float``,
    ``str``, ``Decimal``, ``datetime``, lists, dicts, ``None``). Each record's
    location is ``file.parquet:row N`` (1-based).
    """

    def check(self) -> None:
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise MissingExtra(
                f"read_parquet needs pyarrow, which is not installed: {PIP_PARQUET}"
            ) from None

    # every row is a record (a damaged file raises SourceUnreadable): read by batches
    read_file = FileReader.read_batched_file

    def read_batches(
        self, raw: IO[bytes], path: Path, file_key: str | None
    ) -> Iterator[tuple[list[Any], list[str]]]:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(raw)
        except Exception as exc:  # not Parquet, or its footer is damaged
            raise SourceUnreadable(
                f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})"
            ) from None
        number = 0
        shown = str(path)
        try:
            prefix = f"{shown}:row "
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                size = batch.num_rows
                records = _records(batch)
                places = _places(prefix, number + 1, number + 1 + size)
                number += size
                yield records, places
        except Exception as exc:  # a damaged row group: the rows before it are read
            raise SourceUnreadable(
                f"{path}, after row {number}: the file cannot be read on "
                f"({type(exc).__name__}: {exc})"
            ) from None
        finally:
            parquet.close()


def _records(batch: Any) -> list[dict[str, Any]]:
    """``batch.to_pylist()``: the same dicts of the same values, made from the same
    columns (``to_pydict``), by code that names each column instead of looking
    each value up (a repeated name has its last column's value, as there)."""
    columns = batch.to_pydict()
    names: list[str] = batch.schema.names
    if not names:
        return [{} for _ in range(batch.num_rows)]
    return _maker(len(names))(names, [columns[name] for name in names])


@functools.lru_cache(maxsize=64)
def _maker(width: int) -> _Records:
    """A function of (names, columns) to the records ``{names[0]: columns[0][i],
    names[1]: columns[1][i], ...}`` of ``width`` columns."""
    if width > _MOST_COLUMNS:
        return _wide_records
    keys = "".join(f"k{i}, " for i in range(width))
    columns = "".join(f"c{i}, " for i in range(width))
    values = "".join(f"v{i}, " for i in range(width))
    record = ", ".join(f"k{i}: v{i}" for i in range(width))
    lines = [
        "def records(names, columns):",
        f"    ({keys}) = names",
        f"    ({columns}) = columns",
        f"    return [{{{record}}} for ({values}) in zip({columns})]",
    ]
    env: dict[str, Any] = {}
    # named after this file: a traceback through it is ingestkit's
    exec(compile("\n".join(lines), __file__, "exec"), env)  # noqa: S102 - made from numbers
    made: _Records = env["records"]
    return made


def _wide_records(names: list[str], columns: list[list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _places(prefix: str, first: int, stop: int) -> list[str]:
    """``f"{prefix}{n}"`` for n in range(first, stop): from 1000 on, a thousand at a
    time as one ``f"{prefix}{n // 1000}"`` and each number's last three digits."""
    places = [f"{prefix}{n}" for n in range(first, min(stop, 1000))]
    n = max(first, 1000)
    while n < stop:
        thousands, low = divmod(n, 1000)
        high = min(1000, stop - thousands * 1000)
        head = f"{prefix}{thousands}"
        places += [head + tail for tail in _TAILS[low:high]]
        n = (thousands + 1) * 1000
    return places
