"""ingestkit: pytest for data ingestion into PostgreSQL.

Drop ``ingest_*.py`` files with ``process_*`` functions into a folder, run
``ingestkit``, and every record's outcome is recorded in ``ingestkit.items``,
committed together with the record's own writes.
"""

from __future__ import annotations

__version__ = "0.1.0"

import pluggy

from .api import BatchResult, Failure, run
from .chunks import Chunk
from .collection import Processor
from .config import Config
from .excel import read_xlsx
from .fixtures import fixture
from .http import read_http
from .outcomes import LookupMissing, Skipped, UsageError, skip
from .parquet import read_parquet
from .readers import read_csv, read_json, read_jsonl
from .reports import ItemReport
from .runner import Item
from .session import ExitCode, Session
from .sources import Entry, Reader, SourceSpec, source
from .typed import MissingColumns, RecordInvalid

#: Marks a plugin function as an implementation of a hook in ``ingestkit.hookspec``.
hookimpl = pluggy.HookimplMarker("ingestkit")


def main(args: list[str] | None = None, plugins: list[object] | None = None) -> int:
    """Run ingestkit in-process, as the ``ingestkit`` command would; return the exit code."""
    from .cli import main as _main

    return _main(args, plugins)


__all__ = [
    "BatchResult",
    "Chunk",
    "Config",
    "Entry",
    "ExitCode",
    "Failure",
    "Item",
    "ItemReport",
    "LookupMissing",
    "MissingColumns",
    "Processor",
    "Reader",
    "RecordInvalid",
    "Session",
    "Skipped",
    "SourceSpec",
    "UsageError",
    "__version__",
    "fixture",
    "hookimpl",
    "main",
    "read_csv",
    "read_http",
    "read_json",
    "read_jsonl",
    "read_parquet",
    "read_xlsx",
    "run",
    "skip",
    "source",
]
