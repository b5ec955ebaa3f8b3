"""Scale out (plugin ``workers``): ``-n N`` workers, and ``ingestkit worker --batch ID``.

With ``-n N`` the ``ingestkit`` process becomes the batch's *leader*: it reads
the sources, keys and de-duplicates the items as a single run does, and queues
them in PostgreSQL (:mod:`ingestkit.dispatch`). N worker processes, and any
``ingestkit worker --batch ID`` started elsewhere on the same folder, take
chunks from the queue and commit them with their outcomes. The leader's
reporters see every committed chunk as in a single run.

Processors still run one after another: the leader queues a processor's items
only once every item of the one before is committed, since a processor may
need what the one before wrote. Fixtures wider than ``item`` are set up once
per worker (``batch``: once per worker process).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pluggy

from .dispatch import BatchOver, Queue, Task, items_from_json, reports_from_json
from .lease import LEASE, hold_lease
from .outcomes import UsageError
from .queries import q
from .recorder import LOCK_NAMESPACE
from .runner import FIRST_CHUNK, Chunk, Item, Plan, Runner

if TYPE_CHECKING:
    from .collection import Processor
    from .config import Config
    from .fixtures import Closure
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Largest task the leader queues: small enough to spread a batch over workers.
MAX_TASK = 1000
#: Seconds of processor time a task is sized for, once items' durations are known.
TASK_SECONDS = 0.2
#: Seconds between the leader's looks at the queue, and a worker's idle waits.
POLL, IDLE_MAX = 0.01, 0.05
#: The leader takes the workers' results at least this often (seconds) while feeding.
DRAIN_EVERY = 0.1
#: Options a worker takes from the batch it joins, whatever its own command line says.
BATCH_OPTIONS = ("reprocess", "maxfail", "item_timeout", "store_payloads", "chunk_size", "lease")


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
        # the leader reports, reruns and selects; a worker runs what it is given
        option.last_failed = option.failed_first = False
        option.keyword = None
        for name in ("junitxml", "html"):
            if hasattr(option, name):
                setattr(option, name, None)
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
    option = session.config.option
    if option.worker:
        _join(session)
    elif option.numprocesses and option.dry_run:
        session.notes.append("--dry-run runs in one process: -n is ignored")


def _join(session: Session) -> None:
    """Take the batch's identity and options from the leader's rows."""
    prefix = session.config.option.join_batch
    with session.control.cursor() as cur:
        cur.execute(q("find-running-batch"), {"prefix": prefix})
        rows = cur.fetchall()
        if len(rows) != 1:
            which = "no running batch" if not rows else "more than one running batch"
            raise UsageError(
                f"{which} started with -n matches {prefix!r} (see ingestkit --batches)"
            )
        cur.execute(q("batch-row"), {"id": rows[0][0]})
        batch_id, started_at, meta, lock_key = cur.fetchone()
    session.role = "worker"
    batch = session.batch
    batch.id, batch.started_at, batch.meta, batch.lock_key = batch_id, started_at, meta, lock_key
    queue = Queue(session.control, batch_id)
    state = queue.state()
    have = {p.nodeid for p in session.processors}
    missing = [nodeid for nodeid in state.options.get("processors", ()) if nodeid not in have]
    if missing:
        raise UsageError(
            f"this worker has no processor {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ": start it in the leader's folder, with the leader's paths"
        )
    option = session.config.option
    for name in BATCH_OPTIONS:
        setattr(option, name, state.options.get(name, getattr(option, name, None)))
    if option.item_timeout:
        session.txn.bound_statements(option.item_timeout)
    queue.join(lock_key)
    session.queue = queue


@hookimpl
def ingestkit_runtestloop(session: Session) -> bool | None:
    option = session.config.option
    if option.worker:
        Worker(session).run()
        return True
    if option.numprocesses and not option.dry_run:
        Leader(session, option.numprocesses).run()
        return True
    return None


@hookimpl(hookwrapper=True, specname="ingestkit_runtestloop")
def _with_lease(session: Session) -> Iterator[None]:
    """The leader and each worker hold a lease while the batch runs (lease.py)."""
    with hold_lease(session):
        yield


@hookimpl
def ingestkit_chunk_commit(session: Session, chunk: Chunk) -> None:
    if chunk.task is not None:
        chunk.writes.append(session.queue.finish_writes(chunk))


@hookimpl
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
    if session.role == "leader":
        with contextlib.suppress(Exception):  # a lost connection: the next run cleans up
            session.queue.close()


# -- the leader --------------------------------------------------------------


class Leader(Runner):
    """Feeds the queue and reports what the workers commit."""

    def __init__(self, session: Session, workers: int) -> None:
        super().__init__(session)
        self.workers = workers
        self.queue = session.queue = Queue(session.control, session.batch.id)
        session.role = "leader"
        self.procs: list[subprocess.Popen] = []
        self.by_nodeid = {p.nodeid: p for p in session.processors}
        self.task_size = self.fixed_chunk or FIRST_CHUNK
        self.room = max(4, 3 * workers)  # tasks queued ahead of the workers
        self.reported = 0  # items whose reports came back
        self.reported_seconds = 0.0  # and the time the processors spent on them
        self.drained = 0.0  # when the results were last taken
        self.stop_sent = False

    def run(self) -> None:
        option = self.config.option
        self.queue.open(
            {name: getattr(option, name) for name in BATCH_OPTIONS}
            | {"store_payloads": self.config.get("store_payloads", "failed")}
            | {"processors": [p.nodeid for p in self.session.processors]}
        )
        if self.session.processors:  # (none: only collection errors to report)
            self.spawn()
        try:
            super().run()
            if not self.session.shouldstop:
                self.queue.set_fed()
        except BaseException:
            with contextlib.suppress(Exception):
                self.queue.stop("the leader stopped")
            raise
        finally:
            self.wait_for_workers()

    def spawn(self) -> None:
        config = self.config
        argv = [sys.executable, "-m", "ingestkit", "worker", "--batch", str(self.session.batch.id)]
        argv += ["-q"]
        for spec in config.option.plugins:
            argv += ["-p", spec]
        argv += config.args
        env = dict(os.environ, INGESTKIT_DSN=self.session.dsn)
        for _ in range(self.workers):
            self.procs.append(
                subprocess.Popen(
                    argv, cwd=config.invocation_dir, env=env, stdout=subprocess.DEVNULL
                )
            )

    def wait_for_workers(self) -> None:
        """Let the workers finish what they hold; then take their last results."""
        try:
            for proc in self.procs:
                proc.wait()
        finally:
            try:
                self._complete()
            finally:
                self._report_workers()

    def _report_workers(self) -> None:
        for number, proc in enumerate(self.procs, 1):
            code = proc.returncode
            if code is not None and code < 0:
                self.session.warnings.append(
                    f"worker {number} (pid {proc.pid}) was killed by signal {-code}; "
                    "the chunk it held went back to the queue"
                )
            elif code not in (None, 0, 1, 2):
                self.session.warnings.append(f"worker {number} (pid {proc.pid}) exited with {code}")
        state = self.queue.state()
        for problem in state.problems if state else ():
            self.session.teardown_errors.append(
                (problem["scope"], WorkerError(problem["type"], problem["message"]), problem["tb"])
            )

    # -- feeding -------------------------------------------------------------

    def prepare(self, processor: Processor, setup: bool = True) -> Plan:
        return super().prepare(processor, setup=False)  # the workers set up its fixtures

    def _run_entries(self, plan: Plan, entries: Any) -> None:
        try:
            super()._run_entries(plan, entries)
        except BaseException:  # Ctrl-C, a lost connection: nothing more is queued
            self.session.shouldstop = self.session.shouldstop or "the leader stopped"
            raise

    def run_items(self, plan: Plan, items: list[Item], read: int) -> None:
        processor = plan.processor
        fresh = processor.nodeid in self.session.new_processors
        for start in range(0, len(items), self.task_size):
            self.queue.put(processor.nodeid, fresh, items[start : start + self.task_size])
            self._wait(lambda tasks, _items: tasks < self.room)
        if self.reported and not self.fixed_chunk:
            # tasks of about TASK_SECONDS each: few round trips, and an even spread
            per_item = max(self.reported_seconds / self.reported, 1e-6)
            self.task_size = max(FIRST_CHUNK, min(int(TASK_SECONDS / per_item), MAX_TASK))
        self.chunk_size = self.task_size  # read the source a task at a time

    def finish_processor(self, processor: Processor) -> None:
        if processor is self.session.processors[-1] and not self.session.shouldstop:
            self.queue.set_fed()  # workers leave once the queue is empty
        # the next processor may need every write of this one: wait for all of it
        try:
            self._wait(lambda tasks, _items: tasks == 0)
        finally:
            super().finish_processor(processor)

    def _wait(self, ready: Any) -> None:
        session = self.session
        while not session.shouldstop:
            tasks, items, stop = self.queue.pending()
            if stop and not session.shouldstop:  # a worker stopped the batch (-x, Ctrl-C)
                session.shouldstop = stop
                break
            if ready(tasks, items):
                if time.monotonic() - self.drained > DRAIN_EVERY:
                    self._complete()
                return
            self._complete()
            if self.procs and all(p.poll() is not None for p in self.procs):
                if not self.queue.workers_alive(session.batch.lock_key):
                    session.fatal = (
                        f"every worker exited; {items:,} queued items were not processed"
                    )
                    session.shouldstop = "every worker exited"
                    return
            time.sleep(POLL)

    def _complete(self) -> None:
        super()._complete()  # chunks the leader committed itself (a broken source)
        session = self.session
        self.drained = time.monotonic()
        with self.txn.uninterrupted():  # results taken from the queue are counted
            self._take_results()
        if session.shouldstop and not self.stop_sent:
            self.stop_sent = True
            self.queue.stop(str(session.shouldstop))

    def _take_results(self) -> None:
        session = self.session
        for nodeid, unchanged, reports in self.queue.take_results():
            processor = self.by_nodeid.get(nodeid)
            if processor is None:
                continue
            chunk = Chunk(processor, reports_from_json(nodeid, reports), unchanged)
            session.count(chunk)
            self.hook.ingestkit_chunk_finish(session=session, chunk=chunk)
            if self.active["ingestkit_runtest_logreport"]:
                for report in chunk.reports:
                    self.hook.ingestkit_runtest_logreport(report=report)
            self.reported += len(chunk.reports)
            for report in chunk.reports:
                self.reported_seconds += report.duration_ms / 1000.0
                if report.failed:
                    self._count_failure()


class TaskTaken(Exception):
    """A processor's ROLLBACK freed this worker's claim, and another worker took the task."""


class WorkerError(Exception):
    """An error a worker reported through the queue."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


# -- a worker ----------------------------------------------------------------


class Worker(Runner):
    """Takes tasks from a shared batch's queue until the batch is done."""

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.queue: Queue = session.queue
        self.by_nodeid = {p.nodeid: p for p in session.processors}
        self.claim_params = {
            "batch_id": self.queue.batch_id,
            "ns": LOCK_NAMESPACE,
            "lock_key": session.batch.lock_key,
        }

    def run(self) -> None:
        try:
            self._take_tasks()
        except BatchOver as exc:
            self.txn.release()
            self.session.shouldstop = str(exc)
            self.session.interrupted = True

    def _take_tasks(self) -> None:
        current: Processor | None = None
        plan: Plan | None = None
        idle = POLL
        try:
            while not self.session.shouldstop:
                row = self.txn.claim(q("claim-task"), self.claim_params)
                if row is None:
                    if self._batch_over():
                        break
                    time.sleep(idle)
                    idle = min(idle * 2, IDLE_MAX)
                    continue
                idle = POLL
                task = Task(*row)
                processor = self.by_nodeid[task.processor]  # checked when it joined
                if processor is not current:
                    self.txn.release()  # fixtures set up next commit on their own
                    if current is not None:
                        self.finish_processor(current)
                    current, plan = processor, self._start(processor)
                    continue
                if task.fresh:
                    self.session.new_processors.add(processor.nodeid)
                else:
                    self.session.new_processors.discard(processor.nodeid)
                try:
                    self._run_chunk(plan, items_from_json(processor, task.items), task)
                except TaskTaken:
                    self.txn.release()
                if self.session.shouldstop:
                    self.queue.stop(str(self.session.shouldstop))
        finally:
            try:
                if current is not None:
                    self.finish_processor(current)
                self._complete()
            finally:
                self._teardown("module")
                self._teardown("batch")
                self._report_problems()

    def regain(self, task: Any) -> None:
        params = {"batch_id": self.queue.batch_id, "seq": task.seq}
        if self.txn.claim(q("reclaim-task"), params) is None:
            raise TaskTaken()  # another worker runs it all again: leave it

    def _start(self, processor: Processor) -> Plan:
        if self._module is not None and self._module != processor.module_nodeid:
            self._teardown("module")
        self._module = processor.module_nodeid
        self.runtime.processor = processor
        self.hook.ingestkit_processor_start(processor=processor, session=self.session)
        return self.prepare(processor)

    def _setup_wider(self, closure: Closure, processor: Processor) -> BaseException | None:
        with self.queue.setting_up(self.session.batch.lock_key):
            return super()._setup_wider(closure, processor)

    def _batch_over(self) -> bool:
        state = self.queue.state()
        if state is None or state.status != "running" or state.stop:
            return True
        if state.fed and not state.pending:
            return True
        return not self.queue.leader_alive(state.lock_key)  # dead: stop taking its work

    def _report_problems(self) -> None:
        """Teardown errors reach the leader's summary through the queue."""
        for scope, exc, tb in self.session.teardown_errors:
            with contextlib.suppress(Exception):
                self.queue.problem(
                    {"scope": scope, "type": type(exc).__name__, "message": str(exc), "tb": tb}
                )
