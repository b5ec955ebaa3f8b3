"""The batch's row and locks (plugin ``batches``): one per batch, kept by its leader.

The row in ``ingestkit.batches`` is inserted when the batch starts and
finished when it ends. The connection that commits the items holds the
batch's advisory lock (while it is held, the batch is alive) and each
processor's lock while the processor runs, so that one batch at a time runs
it. A worker of a shared batch does not load this plugin: its leader keeps
the batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

import pluggy
import psycopg2
from psycopg2.extras import Json

from .outcomes import UsageError
from .queries import q
from .recorder import LOCK_NAMESPACE, NEW_PROCESSORS, PROCESSOR_NAMESPACE, mark_interrupted
from .reports import COUNTED
from .transaction import BatchAborted

if TYPE_CHECKING:
    from .collection import Processor
    from .session import Batch, Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: A batch that recorded this many outcomes refreshes the planner's statistics.
ANALYZE_AFTER = 50_000


@hookimpl(tryfirst=True)
def ingestkit_batch_start(session: Session) -> None:
    batch = session.batch
    argv = [session.config.mask(a) for a in session.config.argv]
    # The statement that inserts the row takes its lock, on the connection that
    # commits the items (see Transaction.batch_statement): a batch row is never
    # seen running without its lock, and the lock goes with the connection that writes.
    assert session.txn is not None, "a batch starts with the database open"
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


@hookimpl(tryfirst=True)
def ingestkit_processor_start(processor: Processor, session: Session) -> None:
    """Take the processor's lock (waiting for another batch that runs it), then
    note whether it has no recorded outcome yet: its chunks need no history."""
    params = {"ns": PROCESSOR_NAMESPACE, "processor": processor.nodeid}
    txn = session.txn
    assert txn is not None, "processors run with the database open"
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
            session.config.stash.setdefault(NEW_PROCESSORS, set()).add(processor.nodeid)


@hookimpl(trylast=True)
def ingestkit_processor_finish(processor: Processor, session: Session) -> None:
    txn = session.txn
    if txn is not None and txn.aborted is None and not txn.conn.closed:
        params = {"ns": PROCESSOR_NAMESPACE, "processor": processor.nodeid}
        txn.batch_statement(q("unlock-processor"), params)


@hookimpl(tryfirst=True)
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
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
    if txn is not None and txn.aborted is None and not txn.conn.closed:
        with contextlib.suppress(psycopg2.Error, BatchAborted):  # closing releases it too
            params = {"ns": LOCK_NAMESPACE, "lock_key": batch.lock_key}
            txn.batch_statement(q("unlock-batch"), params)


def _finish(conn: Any, batch: Batch, status: str, exitstatus: int, counts: dict[str, int]) -> None:
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
