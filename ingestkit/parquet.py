"""``read_parquet``: Parquet files streamed by row group (pyarrow, extra ``ingestkit[parquet]``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .readers import FileReader, MissingExtra, SourceUnreadable
from .sources import Entry

PIP_PARQUET = "pip install 'ingestkit[parquet]'"

#: Rows converted to Python at a time (a row group may be much larger).
BATCH_ROWS = 8192


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

    def read_file(self, raw: IO[bytes], path: Path, file_key: str | None) -> Iterator[Entry]:
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
                records = batch.to_pylist()
                places = [f"{prefix}{n}" for n in range(number + 1, number + 1 + len(records))]
                number += len(records)
                yield from map(Entry, records, places)
        except Exception as exc:  # a damaged row group: the rows before it are read
            raise SourceUnreadable(
                f"{path}, after row {number}: the file cannot be read on "
                f"({type(exc).__name__}: {exc})"
            ) from None
        finally:
            parquet.close()
