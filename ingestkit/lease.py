"""A process's lease on its claims in a shared batch: a heartbeat its peers enforce.

PostgreSQL frees a worker's claim (a row lock) when the worker's connection
closes. A worker that is paused (SIGSTOP, a frozen VM, a stopped container)
keeps its connections open, since its kernel still answers for them, so its
claim would last as long as the pause. So each process of a shared batch beats:
a thread with a connection of its own runs :func:`sweep` every
``seconds / BEATS`` seconds. A beat renews the process's own lease (its beat
connection was busy a moment ago) and ends the leases of the others whose beat
connection has been idle for longer than ``seconds``: it terminates the
connections they hold claims and locks on. Their claims go back to the queue at
once, and a late commit from the paused process fails with its connection.

A beat thread stops with its process, which is the point, and whenever the
process cannot reach the server: then the peers' beats end its lease too.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import psycopg2

from .database import connect
from .queries import q

if TYPE_CHECKING:
    from .session import Session

#: Default lease, in seconds (``--lease``).
LEASE = 30.0
#: Beats per lease: a lease survives this many beats lost in a row, less one.
BEATS = 5
#: The start of a beat connection's ``application_name``.
PREFIX = "ik-lease:"


def beat_name(batch_id: Any, held: Sequence[Any] = ()) -> str:
    """The ``application_name`` of a beat connection holding ``held`` (connections)."""
    pids = "".join(f":{conn.get_backend_pid()}" for conn in held)
    return f"{PREFIX}{batch_id}{pids}"


def sweep(conn: Any, batch_id: Any, seconds: float) -> int:
    """Beat once; terminate the connections of the batch's expired leases; how many."""
    with conn.cursor() as cur:
        cur.execute(q("lease-sweep"), {"prefix": f"{PREFIX}{batch_id}:", "seconds": seconds})
        return int(cur.fetchone()[0])


class Lease:
    """The beat thread of one process of a batch.

    ``held``: the connections whose locks the lease covers (a worker's write and
    control connections); none for a process that only enforces the others'.
    """

    def __init__(self, dsn: str, batch_id: Any, seconds: float, held: Sequence[Any] = ()) -> None:
        self.batch_id = batch_id
        self.seconds = seconds
        self.ended = 0  # connections of expired leases this process terminated
        self.problem: str | None = None  # why a beat could not end the others' leases
        self._conn = connect(dsn, beat_name(batch_id, held))
        self._conn.autocommit = True
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ingestkit-lease", daemon=True)

    def start(self) -> Lease:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(Exception):
            self._conn.close()

    def _beat(self) -> None:
        interval = self.seconds / BEATS
        while True:
            try:
                self.ended += sweep(self._conn, self.batch_id, self.seconds)
            except psycopg2.Error as exc:
                if self._conn.closed:
                    return  # the server is out of reach, or ended this lease
                # an error answered is a beat still: the server heard from us; but
                # one that is not about the connection means no lease ever ends
                if not isinstance(exc, psycopg2.OperationalError) and self.problem is None:
                    self.problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if self._stopped.wait(interval):
                return


@contextlib.contextmanager
def hold_lease(session: Session) -> Iterator[Lease | None]:
    """A lease for the run of a shared batch's leader or worker; none otherwise.

    A worker's lease covers its write and control connections; the leader's
    covers nothing it holds, but its beats end the workers' expired leases.
    """
    option = session.config.option
    txn, dsn = session.txn, session.dsn
    if txn is None or dsn is None:  # (no database: nothing to hold)
        yield None
        return
    if option.worker:
        held: tuple[Any, ...] = (txn.conn, session.control)
    elif option.numprocesses and not option.dry_run:
        held = ()
    else:
        yield None
        return
    lease = Lease(dsn, session.batch.id, option.lease, held).start()
    try:
        yield lease
    finally:
        lease.stop()
        if lease.problem is not None:
            session.warnings.append(
                f"the workers' leases could not be enforced ({lease.problem}): a paused "
                "or cut-off worker would have kept its claims"
            )
