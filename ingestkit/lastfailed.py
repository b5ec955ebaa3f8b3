"""``--lf`` / ``--ff`` (plugin ``lastfailed``): rerun what failed, from stored payloads.

The latest outcome of every (processor, key) is in ``ingestkit.latest``; items
whose latest outcome is ``failed`` or ``error`` are re-fed from the record
stored with them, so a rerun works after the source file moved or changed.

A failed key that a full read of its source no longer yields is *retired*
(``ingestkit.latest.retired_batch``, SPEC §9): ``--lf`` does not feed it again.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pluggy
import psycopg2

from .chunks import COMMITTED_ELSEWHERE
from .fixtures import argnames_of
from .queries import q
from .runner import MATCHED_KEYS
from .session import NOTHING_TO_RUN
from .sources import Entry, Unreplayable, from_payload
from .stash import StashKey

if TYPE_CHECKING:
    from .chunks import Chunk
    from .collection import Processor
    from .config import Config
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")


@hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lf",
        "--last-failed",
        dest="last_failed",
        action="store_true",
        help="rerun only items whose latest outcome is failed or error",
    )
    parser.add_argument(
        "--ff",
        "--failed-first",
        dest="failed_first",
        action="store_true",
        help="rerun failed items first, then the sources as usual",
    )


def _failed_entries(session: Session, processor: Processor) -> list[Entry]:
    with session.control.cursor() as cur:
        cur.execute(q("last-failed"), {"processor": processor.nodeid})
        rows = cur.fetchall()
    entries = []
    for key, attempt, error_message, payload, stored_hash in rows:
        if processor.selected_keys is not None and key not in processor.selected_keys:
            continue
        if payload is None:
            problem = (
                None
                if key == ""
                else f"no stored record to rerun for key {key!r} (it could not be read): "
                "fix the source and run without --lf"
            )
            record = None
        else:
            problem = None
            try:  # the very record that was read (sources.to_payload), or why not
                record = from_payload(json.loads(payload) if isinstance(payload, str) else payload)
            except Unreplayable as exc:
                problem = (
                    f"the stored record of key {key!r} cannot be replayed exactly: {exc}; "
                    "fix the source and run without --lf"
                )
                record = None
        entries.append(
            Entry(
                record,
                f"stored record of {processor.nodeid}[{key}]",
                error=problem,
                key=key,
                attempt=attempt + 1,
                previous_error=error_message,
                content_hash=stored_hash,
                rerun=True,
            )
        )
    return entries


@hookimpl(tryfirst=True)
def ingestkit_processor_entries(processor: Processor, session: Session) -> Iterable[Entry] | None:
    option = session.config.option
    if not (option.last_failed or option.failed_first):
        return None
    failed = _failed_entries(session, processor)
    whole_source = processor.source is not None and any(
        e.key == "" and e.record is None for e in failed
    )
    if whole_source:
        return None  # last time the source itself could not be read: read it again
    if option.last_failed:
        _source_state(session)["stored"].add(processor.nodeid)  # its source is not read
        return failed
    return _failed_first(failed, processor, session)


#: Per batch: processors fed only from stored records, and those whose source broke.
_SOURCES = StashKey[dict[str, set[str]]]()
#: Node ids with a key that no record of their source had.
NOT_FOUND = StashKey[list[str]]()
#: Processors read in full under -n whose keys are retired when the batch ends.
RETIRING = StashKey[list[str]]()
#: The keys retired in this batch, by processor.
RETIRED = StashKey[dict[str, list[str]]]()


def _source_state(session: Session) -> dict[str, set[str]]:
    """Per batch: processors fed only from stored records, and those whose source broke."""
    return session.config.stash.setdefault(_SOURCES, {"stored": set(), "broken": set()})


@hookimpl
def ingestkit_chunk_finish(session: Session, chunk: Chunk) -> None:
    for report in chunk.reports:
        if report.key == "" and report.status == "error":
            _source_state(session)["broken"].add(report.processor)


@hookimpl
def ingestkit_processor_finish(processor: Processor, session: Session) -> None:
    """A source read to its end resolves its last "could not be read" error, and
    retires the failed keys it no longer yields."""
    if processor.source is None or session.shouldstop:
        return
    state = _source_state(session)
    if processor.nodeid in state["stored"] or processor.nodeid in state["broken"]:
        return
    if session.control is None or session.control.closed:
        return
    _check_selected_keys(processor, session)
    with session.control.cursor() as cur:
        cur.execute(q("resolve-source-error"), {"processor": processor.nodeid})
    if _full_read(processor, session):
        if session.config.stash.get(COMMITTED_ELSEWHERE, False):  # workers may still commit
            _retiring(session).append(processor.nodeid)
        else:
            retire_gone(session, processor.nodeid)


def not_found(config: Config) -> list[str]:
    """Node ids with a key that no record of their source had (exit 4, as pytest's
    ``not found``)."""
    nodeids: list[str] = config.stash.setdefault(NOT_FOUND, [])
    return nodeids


def _check_selected_keys(processor: Processor, session: Session) -> None:
    option = session.config.option
    if processor.selected_keys is None or option.last_failed or option.failed_first:
        return
    if session.shouldstop or session.interrupted:
        return
    matched: set[tuple[str, str]] = session.config.stash.get(MATCHED_KEYS, set())
    for key in sorted(processor.selected_keys):
        if (processor.nodeid, key) not in matched:
            not_found(session.config).append(f"{processor.nodeid}[{key}]")


def _full_read(processor: Processor, session: Session) -> bool:
    """Whether this batch read every record of the processor's source (SPEC §9):
    not narrowed to keys, fed from stored records (``--lf``/``--ff``), stopped, or rolled back."""
    option = session.config.option
    return not (
        _incremental(processor)
        or processor.selected_keys is not None
        or option.last_failed
        or option.failed_first
        or session.batch.dry_run
        or session.shouldstop
        or session.interrupted
    )


def _incremental(processor: Processor) -> bool:
    """A source factory that takes ``state`` yields what is new, not every record."""
    src = processor.source.src if processor.source is not None else None
    if not callable(src) or hasattr(src, "__iter__") or hasattr(src, "entries"):
        return False
    try:
        return "state" in argnames_of(src)
    except (TypeError, ValueError):
        return True  # cannot tell: do not retire


def _retiring(session: Session) -> list[str]:
    nodeids: list[str] = session.config.stash.setdefault(RETIRING, [])
    return nodeids


def retired(config: Config) -> dict[str, list[str]]:
    """Per processor, the keys this batch retired."""
    keys: dict[str, list[str]] = config.stash.setdefault(RETIRED, {})
    return keys


def retire_gone(session: Session, nodeid: str) -> None:
    """Retire the failed keys of ``nodeid`` that got no outcome in this batch."""
    try:
        with session.control.cursor() as cur:
            cur.execute(q("retire-gone"), {"processor": nodeid, "batch_id": session.batch.id})
            keys = sorted(row[0] for row in cur.fetchall())
    except psycopg2.Error:  # e.g. a statement_timeout on a busy table: a later full read retires
        if session.control.closed:
            raise
        return
    if keys:
        retired(session.config)[nodeid] = keys


@hookimpl
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
    """A shared batch's leader retires once every chunk has committed."""
    nodeids = _retiring(session)
    if not nodeids or session.shouldstop or session.interrupted or session.fatal:
        return
    if session.control is None or session.control.closed:
        return
    for nodeid in nodeids:
        retire_gone(session, nodeid)


@hookimpl
def ingestkit_terminal_summary(terminalreporter: Any, exitstatus: int, config: Config) -> None:
    for nodeid in not_found(config):
        terminalreporter.write_line(
            f"ERROR: not found: {nodeid} (no record of its source has this key)"
        )
    for nodeid, keys in retired(config).items():
        n = len(keys)
        shown = ", ".join(keys[:5]) + (f" (+{n - 5} more)" if n > 5 else "")
        failures = "failure is" if n == 1 else "failures are"
        terminalreporter.write_line(
            f"{nodeid}: {n} earlier {failures} gone from the source, retired"
            f" (--lf no longer feeds them): {shown}"
        )
    _summarize_changes(terminalreporter, config)


def _summarize_changes(terminalreporter: Any, config: Config) -> None:
    """How many records ran again because their content changed, and what changed."""
    session = getattr(config, "session", None)
    if session is None or session.batch.dry_run or session.control is None:
        return
    if session.control.closed or session.fatal:
        return
    try:
        with session.control.cursor() as cur:
            cur.execute(q("batch-changes"), {"batch_id": session.batch.id, "limit": 1000})
            rows = cur.fetchall()
    except psycopg2.Error as exc:  # the summary goes on without it (a lock, a timeout)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        terminalreporter.write_line(f"(changed records not shown: {first})")
        return
    shown: dict[str, int] = {}
    for processor, key, changes, n in rows:
        if processor not in shown:
            shown[processor] = 0
            records = "record" if n == 1 else "records"
            terminalreporter.write_line(f"{processor}: {n} changed {records}")
        if shown[processor] < 3:
            shown[processor] += 1
            terminalreporter.write_line(f"  [{key}] {format_changes(changes)}")


def format_changes(changes: dict[str, list[Any]]) -> str:
    """``{"W": [99, 100]}`` as ``W: 99 → 100``."""
    return "; ".join(
        f"{field}: {_value(before)} → {_value(after)}" for field, (before, after) in changes.items()
    )


def _value(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value, ensure_ascii=False)


def _failed_first(failed: list[Entry], processor: Processor, session: Session) -> Iterator[Entry]:
    """The failed entries, then the source; the runner skips keys it already ran."""
    from .runner import default_entries

    yield from failed
    yield from default_entries(processor, session)


@hookimpl(trylast=True)  # after -k and the other selections: --lf narrows what they chose
def ingestkit_collection_modifyitems(
    session: Session, config: Config, processors: list[Processor]
) -> None:
    if not config.option.last_failed or session.txn is None:
        return
    with session.control.cursor() as cur:
        cur.execute(q("last-failed-processors"))
        failed = {row[0] for row in cur.fetchall()}
    selected = {p.nodeid for p in processors}
    gone = sorted(n for n in failed - selected if _gone(n, processors, config))
    for nodeid in gone:
        session.notes.append(
            f"--lf: {nodeid} has failed items but no longer exists; they are not rerun"
        )
    processors[:] = [p for p in processors if p.nodeid in failed and _has_failed_keys(p, session)]
    if not processors:
        session.config.stash[NOTHING_TO_RUN] = (
            "nothing to rerun (--lf): no selected item's latest outcome is failed or error"
        )
        outside = len(failed - selected) - len(gone)
        if outside:
            plural = "s have" if outside != 1 else " has"
            session.notes.append(
                f"--lf: {outside} processor{plural} failed items outside this selection;"
                " they are not rerun"
            )


def _has_failed_keys(processor: Processor, session: Session) -> bool:
    """Whether a processor narrowed to keys (node ids) has a failure among them."""
    if processor.selected_keys is None:
        return True
    with session.control.cursor() as cur:
        params = {"processor": processor.nodeid, "keys": sorted(processor.selected_keys)}
        cur.execute(q("failed-among-keys"), params)
        return bool(cur.fetchone()[0])


def _gone(nodeid: str, processors: list[Processor], config: Config) -> bool:
    """Whether a processor with failed items is gone: its file, or its function in it.

    Only a file collected in this run is looked into: a processor that was just
    not selected (a node id, a path, ``-k``) still exists.
    """
    path, _, name = nodeid.partition("::")
    if not (config.rootdir / path).exists():
        return True
    module = next((p.module for p in processors if p.module_nodeid == path), None)
    return module is not None and not callable(getattr(module, name, None))
