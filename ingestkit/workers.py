"""Scale out (plugin ``workers``): ``-n N`` workers, and ``ingestkit worker --batch ID``.

With ``-n N`` the ``ingestkit`` process becomes the batch's *leader*
(:mod:`ingestkit.leader`): it reads the sources, keys and de-duplicates the
items as a single run does, and queues them in PostgreSQL
(:mod:`ingestkit.dispatch`). N worker processes (:mod:`ingestkit.worker`), and
any ``ingestkit worker --batch ID`` started elsewhere on the same folder, take
chunks from the queue and commit them with their outcomes. The leader's
reporters see every committed chunk as in a single run.

This plugin picks the mode: it registers the leader's or the worker's plugin
object, whose hooks then do the work. A worker process loads only the plugins
a worker needs (``config.WORKER_PLUGINS``).

Processors still run one after another: the leader queues a processor's items
only once every item of the one before is committed, since a processor may
need what the one before wrote. Fixtures wider than ``item`` are set up once
per worker (``batch``: once per worker process).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pluggy

from .dispatch import Queue
from .leader import Leader
from .lease import LEASE, hold_lease
from .outcomes import UsageError
from .stash import StashKey
from .worker import Worker, join

if TYPE_CHECKING:
    from .config import Config
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: The shared batch's queue, in the leader and in a worker.
QUEUE = StashKey[Queue]()


def _numprocesses(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("expected 0 or more workers")
    return n


@hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--numprocesses",
        dest="numprocesses",
        type=_numprocesses,
        default=0,
        metavar="N",
        help="run the batch on N worker processes ('auto': one per CPU); 0: in this process",
    )
    parser.add_argument(
        "--batch",
        dest="join_batch",
        metavar="ID",
        help="with 'ingestkit worker': the running batch (id or prefix) to work for",
    )
    parser.add_argument(
        "--lease",
        dest="lease",
        type=_lease,
        default=LEASE,
        metavar="SECONDS",
        help=f"a worker that stops beating (paused, cut off) loses its claims after "
        f"SECONDS (default {LEASE:g}; docs/workers.md)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def _lease(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 1 <= seconds <= 86400:  # (nan fails both)
        raise argparse.ArgumentTypeError("expected between 1 and 86400 seconds")
    return seconds


@hookimpl(tryfirst=True)
def ingestkit_configure(config: Config) -> None:
    option = config.option
    if option.worker and not option.join_batch:
        raise UsageError("ingestkit worker: name the batch to work for, --batch ID")
    if option.join_batch:
        option.worker = True
        option.numprocesses = 0


@hookimpl
def ingestkit_report_header(config: Config) -> str | None:
    option = config.option
    if option.worker:
        return f"worker (pid {os.getpid()}) of a shared batch"
    if option.numprocesses and not option.dry_run:
        n = option.numprocesses
        batch = str(config.session.batch.id)[:8]
        plural = "es" if n != 1 else ""
        join = f"ingestkit worker --batch {batch}"
        return f"workers: {n} process{plural} (-n {n}); more join with: {join}"
    return None


@hookimpl
def ingestkit_collection_finish(session: Session) -> None:
    config = session.config
    option = config.option
    if option.worker:
        queue = config.stash[QUEUE] = join(session, option.join_batch)
        config.pluginmanager.register(Worker(session, queue), name="worker")
    elif option.numprocesses and option.dry_run:
        session.notes.append("--dry-run runs in one process: -n is ignored")


@hookimpl
def ingestkit_runtestloop(session: Session) -> bool | None:
    config = session.config
    option = config.option
    if option.worker or not option.numprocesses or option.dry_run:
        return None  # a worker's plugin runs it; or in this process
    queue = config.stash[QUEUE] = Queue(session.control, session.batch.id)
    leader = Leader(session, option.numprocesses, queue)
    config.pluginmanager.register(leader, name="leader")
    leader.run()
    return True


@hookimpl(hookwrapper=True, specname="ingestkit_runtestloop")
def _with_lease(session: Session) -> Iterator[None]:
    """The leader and each worker hold a lease while the batch runs (lease.py)."""
    with hold_lease(session):
        yield
