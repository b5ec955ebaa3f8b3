"""The PostgreSQL recorder (plugin ``recorder``): batches, outcomes, history.

Outcome rows are COPYed into a temp table and moved into ``ingestkit.items``
and ``ingestkit.latest`` by one statement, inside the chunk's transaction.
The batch row lives on a second, autocommit connection that also holds the
batch's advisory lock: while it is held, the batch is alive.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

import pluggy
import psycopg2
from psycopg2.extras import Json

from .copy import NULL, copy_field, copy_rows
from .outcomes import UsageError
from .queries import q
from .reports import COUNTED, History, ItemReport
from .transaction import BatchAborted

if TYPE_CHECKING:
    from .collection import Processor
    from .runner import Chunk
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: A batch that recorded this many outcomes refreshes the planner's statistics.
ANALYZE_AFTER = 50_000
#: First key of the advisory locks that let one batch at a time run a processor.
PROCESSOR_NAMESPACE = 0x696B_0003
#: First key of the two-key advisory locks that mark live batches.
LOCK_NAMESPACE = 0x696B_0002


def mark_interrupted(conn: Any, own: Any = None) -> list[str]:
    """Mark batches whose process died as ``interrupted``; return their ids."""
    with conn.cursor() as cur:
        cur.execute(q("mark-interrupted"), {"own": own, "ns": LOCK_NAMESPACE})
        ids = [str(r[0]) for r in cur.fetchall()]
        cur.execute(q("drop-dispatch"), {"batch_id": None})  # the queues of batches now over
    conn.commit()
    return ids


@hookimpl(tryfirst=True)
def ingestkit_batch_start(session: Session) -> None:
    if session.role == "worker":  # the leader recorded the batch
        _create_temp_tables(session)
        return
    batch = session.batch
    argv = [session.config.mask(a) for a in session.config.argv]
    # The statement that inserts the row takes its lock, on the connection that
    # commits the items (see Transaction.batch_statement): a batch row is never
    # seen running without its lock, and the lock goes with the connection that writes.
    conn = session.txn.conn
    with conn.cursor() as cur:
        cur.execute(
            q("insert-batch"),
            {
                "id": batch.id,
                "argv": Json(["ingestkit", *argv]),
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "meta": Json(batch.meta),
                "ns": LOCK_NAMESPACE,
            },
        )
        batch.started_at, batch.lock_key, _ = cur.fetchone()
    conn.commit()  # before any chunk: a dry run's writes start after it
    with session.control.cursor() as cur:  # this month's and next month's, when missing
        cur.execute(q("add-items-partitions"))
    session.interrupted_batches = mark_interrupted(session.control, batch.id)
    _create_temp_tables(session)


def _create_temp_tables(session: Session) -> None:
    """The outcome rows' staging table, and the guard against a processor's COMMIT."""
    with session.txn.conn.cursor() as cur:
        cur.execute(q("create-outcomes-table"))
        cur.execute(q("create-commit-guard"))
    session.txn.conn.commit()


@hookimpl(tryfirst=True)
def ingestkit_processor_start(processor: Processor, session: Session) -> None:
    """Take the processor's lock (waiting for another batch that runs it), then
    note whether it has no recorded outcome yet: its chunks need no history."""
    if session.role == "worker":  # the leader holds the lock and knows the history
        return
    params = {"ns": PROCESSOR_NAMESPACE, "processor": processor.nodeid}
    txn = session.txn
    if not txn.batch_statement(q("try-lock-processor"), params)[0][0]:
        with session.control.cursor() as cur:
            cur.execute(q("processor-holder"), params)
            holder = cur.fetchone()
        who = "another batch"
        if holder:
            who = f"batch {holder[0]} (host {holder[1]}, pid {holder[2]})"
        print(f"{processor.nodeid} is being run by {who}: waiting for it", file=sys.stderr)
        txn.batch_statement(q("lock-processor"), params)
    with session.control.cursor() as cur:
        cur.execute(q("processor-has-history"), {"processor": processor.nodeid})
        if not cur.fetchone()[0]:
            session.new_processors.add(processor.nodeid)


@hookimpl(trylast=True)
def ingestkit_processor_finish(processor: Processor, session: Session) -> None:
    if session.role == "worker":
        return
    txn = session.txn
    if txn is not None and txn.aborted is None and not txn.conn.closed:
        params = {"ns": PROCESSOR_NAMESPACE, "processor": processor.nodeid}
        txn.batch_statement(q("unlock-processor"), params)


@hookimpl
def ingestkit_chunk_history(
    session: Session, processor: Processor, keys: list[str]
) -> dict[str, tuple]:
    """The latest committed outcomes, read on the control connection.

    Committed data is all that matters here: a key seen earlier in this batch
    is a duplicate, caught before its history is looked at.
    """
    if processor.nodeid in session.new_processors:
        return {}  # a first load: nothing can be ingested already
    with session.control.cursor() as cur:
        cur.execute(q("history"), {"processor": processor.nodeid, "keys": keys})
        return {row[0]: History(*row[1:]) for row in cur.fetchall()}


@functools.cache
def record_outcomes(first_load: bool) -> str:
    """The statement that moves a chunk's outcome rows to their tables (queries.sql)."""
    latest = (
        q("insert-latest") if first_load else f"{q('insert-latest')}\n{q('latest-on-conflict')}"
    )
    # with history, each row notes the fields it changed (SPEC §9, "what changed")
    items = q("insert-items") if first_load else q("insert-items-changes")
    return ";\n".join((items, latest, q("truncate-outcomes")))


def store_all(session: Session) -> bool:
    """Whether ``ingestkit.items`` keeps every item's record (``store_payloads = all``);
    with ``latest`` (the default) only ``ingestkit.latest`` keeps succeeded ones."""
    return bool(session.config.get("store_payloads", "latest") == "all")


def outcome_rows(reports: list[ItemReport]) -> bytes:
    """A chunk's reports as COPY text for ``pg_temp.ingestkit_outcomes``.

    Most reports are plain successes: they take a short path with no
    per-field conversion; the rest go through :func:`copy_rows`.
    """
    lines = []
    plain = []
    escaped: dict[str, str] = {}
    for seq, r in enumerate(reports):
        if r.error_type is None and r.log is None and r.location is None:
            # a plain success (with its record, store_payloads = latest): no per-field work
            proc = escaped.get(r.processor)
            if proc is None:
                proc = escaped[r.processor] = copy_field(r.processor)
            payload = NULL if r.payload is None else copy_field(r.payload)
            lines.append(
                f"{seq}\t{proc}\t{copy_field(r.key)}\t{r.status}\t{r.attempt}\t"
                f"{r.content_hash or NULL}\t{r.duration_ms!r}\t{NULL}\t{NULL}\t{NULL}\t{NULL}\t"
                f"{payload}\t{r.finished_epoch!r}\t{NULL}\t{'t' if r.track else 'f'}\n"
            )
        else:
            plain.append(
                (
                    seq,
                    r.processor,
                    r.key,
                    r.status,
                    r.attempt,
                    r.content_hash,
                    r.duration_ms,
                    _readable(r.error_type),
                    _readable(r.error_message),
                    _readable(r.traceback),
                    _readable(r.log),
                    r.payload,
                    r.finished_epoch,
                    _readable(r.location),
                    r.track,
                )
            )
    # keys and payloads are made storable before (sources.storable_key, to_payload)
    data = "".join(lines).encode("utf-8", "backslashreplace")
    return data + copy_rows(plain, errors="backslashreplace") if plain else data


def _readable(text: str | None) -> str | None:
    """Message text PostgreSQL can hold: NUL as ``\\0``, a lone surrogate as ``\\udXXX``."""
    if text is None or text.isascii() and "\0" not in text:
        return text
    return text.replace("\0", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")


@hookimpl
def ingestkit_chunk_commit(session: Session, chunk: Chunk) -> None:
    """Add the chunk's outcome rows to what commits with it."""
    params = {"batch_id": session.batch.id, "store_all": store_all(session)}
    if chunk.restored:
        restore = {"processor": chunk.processor.nodeid, "keys": chunk.restored}
        chunk.writes.append(lambda cur: cur.execute(q("restore-succeeded"), restore))
    if not chunk.reports:
        return
    data = outcome_rows(chunk.reports)
    # A processor with no recorded outcome gets plain inserts into ingestkit.latest:
    # its lock keeps other batches out, and a key comes once per batch. Key "" is
    # the exception: a broken source's error item may share it with a record.
    first_load = chunk.processor.nodeid in session.new_processors and all(
        r.key for r in chunk.reports
    )
    statement = record_outcomes(first_load)

    def write_outcomes(cur: Any) -> None:
        # one read of the whole payload: each read would wait for the GIL
        cur.copy_expert(q("outcomes-copy"), io.BytesIO(data), size=len(data) + 1)
        cur.execute(statement, params)

    chunk.writes.append(write_outcomes)


@hookimpl(tryfirst=True)
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
    if session.role == "worker":
        return  # the leader finishes the batch
    if session.control is None or session.batch.lock_key is None:
        return  # no batch row was made
    batch = session.batch
    counts = {name: session.counts.get(name, 0) for name in COUNTED}
    status = "interrupted" if exitstatus == 2 else "finished"
    try:
        try:
            conn = session.live_control()
            _finish(conn, batch, status, exitstatus, counts)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if not session.control.closed:
                raise
            conn = session.live_control()  # lost on its own (a DBA, a pooler): once more
            _finish(conn, batch, status, exitstatus, counts)
        if sum(counts.values()) - counts["unchanged"] >= ANALYZE_AFTER:
            # fresh statistics, so the next run's history reads use the indexes
            with conn.cursor() as cur:
                cur.execute(q("analyze"))
    except (psycopg2.OperationalError, psycopg2.InterfaceError, UsageError):
        if not session.control.closed:
            raise
        # the server went away: the next run sees the batch's lock gone and marks it interrupted
    txn = session.txn
    if txn.aborted is None and not txn.conn.closed:
        with contextlib.suppress(psycopg2.Error, BatchAborted):  # closing releases it too
            params = {"ns": LOCK_NAMESPACE, "lock_key": batch.lock_key}
            txn.batch_statement(q("unlock-batch"), params)


def _finish(conn: Any, batch: Any, status: str, exitstatus: int, counts: dict) -> None:
    with conn.cursor() as cur:
        cur.execute(
            q("finish-batch"),
            {
                "id": batch.id,
                "status": status,
                "exit_code": exitstatus,
                "counts": Json(counts),
                "meta": Json(batch.meta, dumps=lambda v: json.dumps(v, default=str)),
            },
        )
