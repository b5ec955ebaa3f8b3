"""The file ledger (plugin ``files``): ``ingestkit.files`` and skipping files read already.

A file reader (:class:`~ingestkit.readers.FileReader`) reports each file it
reads to the processor's :class:`FileLedger`: its size, sha256 and how many
entries it gave. A file is ``complete`` when it was read to its end and none
of its items failed or errored in the batch; the next batch does not parse a
file with that content again for the same processor, and counts its items as
``unchanged``. ``--reprocess`` reads every file.

The ledger is written when the batch finishes, after every chunk committed
(never in a dry run): a crash before loses only the knowledge, so the files
are parsed again and their items found ``unchanged`` one by one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from .queries import q
from .readers import FileReader
from .stash import StashKey

if TYPE_CHECKING:
    from .chunks import Chunk
    from .collection import Processor
    from .session import Session
    from .sources import SourceSpec
    from .terminal import TerminalReporter

hookimpl = pluggy.HookimplMarker("ingestkit")

_STASH = StashKey["dict[str, FileLedger]"]()


@dataclass
class FileRead:
    """One file as a batch read it."""

    path: str  # relative to the rootdir
    shown: str  # as locations show it
    size: int
    sha256: str
    items: int = 0
    complete: bool = False
    failed: bool = False


class FileLedger:
    """What one processor's file reader read in this batch, and what it may skip."""

    def __init__(self, session: Session, processor: Processor) -> None:
        self.session = session
        self.processor = processor
        self.rootdir: Path = session.config.rootdir
        self.reprocess = bool(getattr(session.config.option, "reprocess", False))
        self.done: dict[str, int] | None = None  # sha256 -> items, read completely before
        self.read_files: list[FileRead] = []
        self.skipped = 0
        self.skipped_items = 0
        self.unplaced = False  # a failure whose file is not known: no file is complete

    def header_problem(self, path: Path, columns: list[str]) -> str | None:
        """Why a typed processor cannot read a file with these columns, or None."""
        from .typed import MissingColumns, ModelError, model_for

        try:
            model = model_for(self.processor.func)
        except ModelError:  # the runner reports it for the processor
            return None
        if model is None:
            return None
        try:
            model.check_header(columns, str(path))
        except MissingColumns as exc:
            return str(exc)
        return None

    def _relative(self, path: Path) -> str:
        absolute = Path(os.path.normpath(path.absolute()))
        try:
            return absolute.relative_to(self.rootdir.absolute()).as_posix()
        except ValueError:
            return absolute.as_posix()

    def skip(self, path: Path, size: int, sha256: str) -> bool:
        if self.reprocess or self.processor.selected_keys is not None:
            return False
        if self.done is None:
            with self.session.live_control().cursor() as cur:
                cur.execute(q("files-complete"), {"processor": self.processor.nodeid})
                self.done = {sha: items for sha, items in cur.fetchall()}
        items = self.done.get(sha256)
        if items is None:
            return False
        self.skipped += 1
        self.skipped_items += items
        if items:
            self._count_unchanged(items)
        return True

    def _count_unchanged(self, items: int) -> None:
        from .chunks import Chunk

        chunk = Chunk(self.processor, unchanged=items)
        self.session.count(chunk)
        self.session.config.hook.ingestkit_chunk_finish(session=self.session, chunk=chunk)

    def read(self, path: Path, size: int, sha256: str, items: int, complete: bool) -> None:
        self.read_files.append(
            FileRead(self._relative(path), str(path), size, sha256, items, complete)
        )

    def failed(self, location: str | None) -> None:
        """An item failed or errored at ``location``: its file is not complete."""
        if location is not None:
            for read in reversed(self.read_files):  # mostly the file being read
                shown = read.shown
                if location.startswith(shown) and location[len(shown) : len(shown) + 1] in (
                    "",
                    ":",
                    "#",
                    ",",
                ):
                    read.failed = True
                    return
        self.unplaced = True

    def rows(self) -> dict[str, Any]:
        stopped = bool(self.session.shouldstop) or self.processor.selected_keys is not None
        statuses = []
        for read in self.read_files:
            if read.failed or self.unplaced:
                statuses.append("failed")
            elif not read.complete or stopped:
                statuses.append("partial")
            else:
                statuses.append("complete")
        return {
            "processor": self.processor.nodeid,
            "batch_id": self.session.batch.id,
            "paths": [r.path for r in self.read_files],
            "sizes": [r.size for r in self.read_files],
            "shas": [r.sha256 for r in self.read_files],
            "items": [r.items for r in self.read_files],
            "statuses": statuses,
        }


def _ledgers(session: Session) -> dict[str, FileLedger]:
    ledgers: dict[str, FileLedger] = session.config.stash.setdefault(_STASH, {})
    return ledgers


@hookimpl
def ingestkit_make_source(spec: SourceSpec, processor: Processor, session: Session) -> Any:
    """File readers read through the processor's ledger."""
    if not isinstance(spec.src, FileReader):
        return None
    ledger = FileLedger(session, processor)
    _ledgers(session)[processor.nodeid] = ledger
    entries: Any = spec.src.entries(spec.declared_in, ledger)
    return entries


@hookimpl
def ingestkit_chunk_finish(session: Session, chunk: Chunk) -> None:
    ledger = _ledgers(session).get(chunk.processor.nodeid)
    if ledger is None:
        return
    for report in chunk.reports:
        if report.status in ("failed", "error"):
            ledger.failed(report.location)


@hookimpl
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
    ledgers = _ledgers(session)
    if session.batch.dry_run:
        return
    rows = [ledger.rows() for ledger in ledgers.values() if ledger.read_files]
    if not rows:
        return
    with session.live_control().cursor() as cur:
        for params in rows:
            cur.execute(q("files-record"), params)


@hookimpl
def ingestkit_terminal_summary(
    terminalreporter: TerminalReporter, exitstatus: int, config: Any
) -> None:
    ledgers: dict[str, FileLedger] = config.stash.get(_STASH, {})
    files = sum(ledger.skipped for ledger in ledgers.values())
    if files:
        items = sum(ledger.skipped_items for ledger in ledgers.values())
        terminalreporter.write_line(
            f"{files:,} file{'s' if files != 1 else ''} skipped, already read completely "
            f"({items:,} unchanged item{'s' if items != 1 else ''} not parsed again; "
            "--reprocess reads them)"
        )
