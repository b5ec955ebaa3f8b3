"""The file ledger (plugin ``files``): ``ingestkit.files`` and skipping files read already.

A file reader (:class:`~ingestkit.readers.FileReader`) reports each file it
reads to the processor's :class:`FileLedger`: its size, sha256 and how many
entries it gave. A file is ``complete`` when it was read to its end and none
of its items failed or errored in the batch; the next batch does not parse a
file with that content again for the same processor, and counts its items as
``unchanged``. ``--reprocess`` reads every file.

A file's row is written in the transaction of the first chunk to commit once
the file was read to its end, so it commits with (or after) the file's last
items: a batch that is killed leaves every file whose items all committed
recorded, and the next run starts at the first file that was not (a backfill
resumes by file). What is left is written when the batch finishes (a file
read partly, a file whose last chunk was the batch's last); never in a dry run.
Under ``-n`` the leader's ledger hands each file that needs reading to a
worker (``ingestkit_file_dispatch``), whose ledger records it so; rows of
files the leader reads itself wait for the batch's end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from .chunks import COMMITTED_ELSEWHERE
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

    def __init__(self, session: Session, processor: Processor, handed: bool = False) -> None:
        self.session = session
        self.processor = processor
        self.rootdir: Path = session.config.rootdir
        #: the files come from a leader that checked them (a worker's ledger): none skipped
        self.handed = handed
        self.reprocess = bool(getattr(session.config.option, "reprocess", False))
        self.done: dict[str, int] | None = None  # sha256 -> items, read completely before
        self.read_files: list[FileRead] = []
        self.recorded = 0  # read_files[:recorded] are written to ingestkit.files
        self.skipped = 0
        self.skipped_items = 0
        self.unplaced = False  # a failure whose file is not known: no file is complete
        self.reading: str | None = None  # the file being read now, as locations show it
        #: files (as shown) with a failure found before they were read to their end
        self.failed_shown: set[str] = set()

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
        """Whether the file is not parsed here: read completely before, or handed off."""
        self.reading = None
        if not self.handed:
            if self._read_before(size, sha256):
                return True
            hook = self.session.config.hook
            if hook.ingestkit_file_dispatch(
                session=self.session, processor=self.processor, path=path, size=size, sha256=sha256
            ):
                return True
        self.reading = str(path)
        return False

    def _read_before(self, size: int, sha256: str) -> bool:
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
        read = FileRead(self._relative(path), str(path), size, sha256, items, complete)
        read.failed = read.shown in self.failed_shown
        self.reading = None
        self.read_files.append(read)

    def failed(self, location: str | None) -> None:
        """An item failed or errored at ``location``: its file is not complete."""
        if location is not None:
            if self.reading is not None and _within(location, self.reading):
                self.failed_shown.add(self.reading)  # the file being read: see read()
                return
            for read in reversed(self.read_files):
                if _within(location, read.shown):
                    read.failed = True
                    return
        self.unplaced = True

    def take_rows(self) -> dict[str, Any] | None:
        """The rows of the files read to their end and not recorded yet, or None."""
        reads = self.read_files[self.recorded :]
        self.recorded = len(self.read_files)
        return self._rows(reads) if reads else None

    def _rows(self, reads: list[FileRead]) -> dict[str, Any]:
        stopped = bool(self.session.shouldstop) or self.processor.selected_keys is not None
        statuses = []
        for read in reads:
            if read.failed or self.unplaced:
                statuses.append("failed")
            elif not read.complete or stopped:
                statuses.append("partial")
            else:
                statuses.append("complete")
        return {
            "processor": self.processor.nodeid,
            "batch_id": self.session.batch.id,
            "paths": [r.path for r in reads],
            "sizes": [r.size for r in reads],
            "shas": [r.sha256 for r in reads],
            "items": [r.items for r in reads],
            "statuses": statuses,
        }


def _within(location: str, shown: str) -> bool:
    """Whether ``location`` is in the file shown as ``shown`` (``file:line``, ``file#n``...)."""
    return location.startswith(shown) and location[len(shown) : len(shown) + 1] in (
        "",
        ":",
        "#",
        ",",
    )


def _ledgers(session: Session) -> dict[str, FileLedger]:
    ledgers: dict[str, FileLedger] = session.config.stash.setdefault(_STASH, {})
    return ledgers


def handed_ledger(session: Session, processor: Processor) -> FileLedger:
    """The ledger of the files a worker's leader hands it for ``processor``."""
    ledger = _ledgers(session).get(processor.nodeid)
    if ledger is None:
        ledger = _ledgers(session)[processor.nodeid] = FileLedger(session, processor, handed=True)
    return ledger


@hookimpl
def ingestkit_make_source(spec: SourceSpec, processor: Processor, session: Session) -> Any:
    """File readers read through the processor's ledger."""
    if not isinstance(spec.src, FileReader):
        return None
    ledger = FileLedger(session, processor)
    _ledgers(session)[processor.nodeid] = ledger
    entries: Any = spec.src.entries(spec.declared_in, ledger)
    return entries


def _note_failures(ledger: FileLedger, chunk: Chunk) -> None:
    for report in chunk.reports:
        if report.status in ("failed", "error"):
            ledger.failed(report.location)


@hookimpl
def ingestkit_chunk_commit(session: Session, chunk: Chunk) -> None:
    """The files read to their end by now commit with the chunk (see the module's doc)."""
    ledger = _ledgers(session).get(chunk.processor.nodeid)
    if ledger is None or session.config.stash.get(COMMITTED_ELSEWHERE, False):
        return  # (a leader: its workers commit the items of the files it read)
    _note_failures(ledger, chunk)  # before its rows are made: they may be this chunk's files
    if session.batch.dry_run or session.shouldstop or chunk.left:
        return  # stopping: the batch's end records what was read, as partial
    params = ledger.take_rows()
    if params is not None:
        chunk.writes.append(lambda cur: cur.execute(q("files-record"), params))


@hookimpl
def ingestkit_chunk_finish(session: Session, chunk: Chunk) -> None:
    """A leader learns its workers' failures when their chunks come back."""
    ledger = _ledgers(session).get(chunk.processor.nodeid)
    if ledger is not None and session.config.stash.get(COMMITTED_ELSEWHERE, False):
        _note_failures(ledger, chunk)


@hookimpl
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
    ledgers = _ledgers(session)
    if session.batch.dry_run:
        return
    rows = [params for ledger in ledgers.values() if (params := ledger.take_rows()) is not None]
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
