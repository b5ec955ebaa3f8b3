"""A worker of a shared batch (plugin ``worker``, registered by ``workers``).

``ingestkit worker --batch ID`` (and each of the ``-n N`` processes) joins a
running batch: it takes the batch's identity and options from the leader's
rows, then claims tasks from the queue (:mod:`ingestkit.dispatch`) and runs
each with the in-process :meth:`~ingestkit.runner.Runner.run_chunk`. The
claim is made in the chunk's transaction, and the chunk's commit ends the
task (``ingestkit_chunk_commit``). A worker process registers only the
plugins a worker needs (``config.WORKER_PLUGINS``): the leader records the
batch, selects, reruns and reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from .chunks import Chunk
from .dispatch import BatchOver, Queue, Task, items_from_json
from .files import handed_ledger
from .leader import BATCH_OPTIONS
from .outcomes import UsageError
from .queries import q
from .recorder import LOCK_NAMESPACE, NEW_PROCESSORS
from .runner import Plan, Runner
from .stash import StashKey

if TYPE_CHECKING:
    from .collection import Processor
    from .runner import Item
    from .session import Session
    from .transaction import Transaction

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Seconds of a worker's first and longest idle waits for a task.
POLL, IDLE_MAX = 0.01, 0.05
#: The host name and process id of the batch's leader (ingestkit.batches).
LEADER = StashKey[tuple[str, int]]()


class TaskTaken(Exception):
    """A processor's ROLLBACK freed this worker's claim, and another worker took the task."""


class GaveWay(Exception):
    """A chunk waiting for its turn holds a row an earlier task's worker waits for
    (or an earlier task lies unclaimed): it is undone, its task runs again later."""


class TaskClaim:
    """A worker's hold on a claimed task (:class:`ingestkit.chunks.Claim`).

    A chunk's rows are written, and the chunk committed, only after every
    earlier task of its processor committed: of two records whose writes
    conflict, the first in the source wins, as in one process. The wait is in
    the worker's main thread, before the chunk's buffered rows are written, so
    Ctrl-C and a stopping batch end it.
    """

    def __init__(self, worker: Worker, task: Task) -> None:
        self.worker = worker
        self.task = task

    def regain(self) -> None:
        worker = self.worker
        params = {"batch_id": worker.queue.batch_id, "seq": self.task.seq}
        if worker.txn.claim(q("reclaim-task"), params) is None:
            raise TaskTaken()  # another worker runs it all again: leave it

    def wait_turn(self) -> None:
        worker = self.worker
        if worker.session.shouldstop:
            return  # stopping: what ran commits now, in any order
        pid = worker.txn.conn.get_backend_pid()
        pause = POLL / 8
        while True:
            wait, give_way = worker.queue.turn(self.task.processor, self.task.seq, pid)
            if not wait:
                return
            if give_way:
                raise GaveWay(f"task {self.task.seq} gave way to an earlier task")
            time.sleep(pause)
            pause = min(pause * 2, IDLE_MAX)


@dataclass
class FileTask:
    """A claimed file task: one file of a glob, read here whole (see dispatch.py)."""

    seq: int
    processor: str
    path: str
    done: int  # entries of the file committed, by this worker or one before it
    failed: bool  # whether any of them failed or errored
    text: str  # the task's ``items`` as committed last (the progress a commit expects)
    reading: int = 0  # entries of the chunk running now
    ended: bool = False  # the chunk that ends the task (and records the file)


def join(session: Session, prefix: str) -> Queue:
    """Take the batch's identity and options from the leader's rows; its queue."""
    with session.control.cursor() as cur:
        cur.execute(q("find-running-batch"), {"prefix": prefix})
        rows = cur.fetchall()
        if len(rows) != 1:
            which = "no running batch" if not rows else "more than one running batch"
            raise UsageError(
                f"{which} started with -n matches {prefix!r} (see ingestkit --batches)"
            )
        cur.execute(q("batch-row"), {"id": rows[0][0]})
        batch_id, started_at, meta, lock_key, hostname, pid = cur.fetchone()
    batch = session.batch
    batch.id, batch.started_at, batch.meta, batch.lock_key = batch_id, started_at, meta, lock_key
    queue = Queue(session.control, batch_id)
    state = queue.state()
    if state is None:
        raise UsageError(f"the batch {prefix!r} has no queue: it was not started with -n")
    _check_processors(session, state.options.get("processors", ()))
    option = session.config.option
    txn = session.txn
    assert txn is not None, "a worker joins with the database open"
    for name in BATCH_OPTIONS:
        setattr(option, name, state.options.get(name, getattr(option, name, None)))
    if option.item_timeout:
        txn.bound_statements(option.item_timeout)
    queue.join(lock_key)
    session.config.stash[LEADER] = (hostname, pid)
    return queue


def _check_processors(session: Session, wanted: list[str]) -> None:
    """A worker must have every processor of the batch it joins."""
    have = {p.nodeid for p in session.processors}
    missing = [nodeid for nodeid in wanted if nodeid not in have]
    if missing:
        raise UsageError(
            f"this worker has no processor {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ": start it in the leader's folder, with the leader's paths"
        )


class Worker:
    """Takes tasks from a shared batch's queue until the batch is done."""

    def __init__(self, session: Session, queue: Queue) -> None:
        self.session = session
        self.queue = queue
        assert session.txn is not None and session.batch.lock_key is not None, "joined"
        self.txn: Transaction = session.txn
        self.lock_key: int = session.batch.lock_key
        self.runner: Runner | None = None  # made when the batch starts (options joined)
        self.by_nodeid = {p.nodeid: p for p in session.processors}
        #: file tasks this worker left: it cannot see their file
        self.left_files: list[int] = []
        self.claim_params = {
            "batch_id": queue.batch_id,
            "ns": LOCK_NAMESPACE,
            "lock_key": self.lock_key,
            "left": self.left_files,
        }
        #: started by hand (``ingestkit worker``), not by the leader: maybe elsewhere
        self.joined = session.config.stash.get(LEADER, None) != (socket.gethostname(), os.getppid())
        self.file_task: FileTask | None = None  # the file task being read
        self.skip_entries = 0  # of its first entries, those committed already

    @hookimpl
    def ingestkit_runtestloop(self) -> bool:
        self.runner = Runner(self.session)
        try:
            self._take_tasks(self.runner)
        except BatchOver as exc:
            self.txn.release()
            self.session.shouldstop = str(exc)
            self.session.interrupted = True
        return True

    @hookimpl
    def ingestkit_chunk_commit(self, chunk: Chunk) -> None:
        """End the chunk's task in its transaction (or shrink it to what was not run);
        a file task's chunk moves its task on."""
        if chunk.task is None and self.file_task is not None:
            chunk.task = self.file_task  # (a broken source's error item, read here)
        if isinstance(chunk.task, FileTask):
            chunk.writes.append(self.queue.file_writes(chunk, chunk.task))
        elif chunk.task is not None:
            chunk.writes.append(self.queue.finish_writes(chunk))

    @hookimpl
    def ingestkit_chunk_run(
        self, runner: Runner, plan: Plan, items: list[Item], read: int
    ) -> bool | None:
        """A chunk of the file task being read: run it here, its keys reserved."""
        task = self.file_task
        if task is None:
            return None  # a queued chunk: _run_task runs it
        # entries and items are one to one here: the leader hands off only files read
        # in full (no keys selected, none re-fed), so none is left out
        skip = min(self.skip_entries, read)
        self.skip_entries -= skip
        items = items[skip:]
        if not items:
            return True  # committed before this worker took the file on
        task.reading = read - skip
        firsts = self.queue.reserve_keys(
            plan.processor.nodeid, [it for it in items if not it.duplicate]
        )
        for item in items:
            if item.key in firsts:
                item.duplicate, item.first = True, firsts[item.key]
        started = time.perf_counter()
        runner.run_chunk(plan, items, task)
        runner.adapt(time.perf_counter() - started, read)
        return True

    def _take_tasks(self, runner: Runner) -> None:
        session = self.session
        current: Processor | None = None
        plan: Plan | None = None
        idle = POLL
        try:
            while not session.shouldstop:
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
                        runner.finish_processor(current)
                    current, plan = processor, self._start(runner, processor)
                    continue
                assert plan is not None
                if task.items.startswith("{"):
                    self._run_file_task(runner, plan, task)
                else:
                    self._run_task(runner, plan, task)
        finally:
            try:
                if current is not None:
                    runner.finish_processor(current)
                runner.complete()
            finally:
                runner.teardown("module")
                runner.teardown("batch")
                self._report_problems()

    def _note_fresh(self, task: Task) -> None:
        fresh = self.session.config.stash.setdefault(NEW_PROCESSORS, set())
        if task.fresh:
            fresh.add(task.processor)
        else:
            fresh.discard(task.processor)

    def _run_file_task(self, runner: Runner, plan: Plan, task: Task) -> None:
        """Read the task's file and run it chunk by chunk from where the task stands."""
        session = self.session
        held = self.queue.hold_file(self.lock_key, task.seq)
        self.txn.release()  # the claim's row lock: the session lock holds the task now
        if not held:
            return
        try:
            progress = json.loads(task.items)
            if self.joined and not os.path.isfile(progress["file"]):
                self.left_files.append(task.seq)  # for the leader's own workers to read
                return
            self._note_fresh(task)
            file = FileTask(
                task.seq,
                task.processor,
                progress["file"],
                progress["done"],
                progress["failed"],
                task.items,
            )
            processor = plan.processor
            spec = processor.source
            assert spec is not None, "the leader hands off files of sources only"
            ledger = handed_ledger(session, processor)
            if file.failed:
                ledger.failed_shown.add(file.path)
            entries = spec.src.file_entries(Path(file.path), spec.declared_in, ledger)
            self.file_task, self.skip_entries = file, file.done
            try:
                runner.run_entries(plan, iter(entries))
            finally:
                self.file_task = None
            if session.shouldstop:
                self.queue.stop(str(session.shouldstop))
                return  # the task stays queued; the batch is over
            file.ended = True
            runner.commit(Chunk(processor, task=file))  # the file's row commits with it
            runner.complete()
        finally:
            with contextlib.suppress(Exception):  # a lost connection freed it already
                self.queue.release_file(self.lock_key, task.seq)

    def _run_task(self, runner: Runner, plan: Plan, task: Task) -> None:
        session = self.session
        self._note_fresh(task)
        items = items_from_json(plan.processor, task.items)
        failures = runner.failures
        try:
            runner.run_chunk(plan, items, task, TaskClaim(self, task))
        except TaskTaken:
            self.txn.release()
        except GaveWay:
            self.txn.release()  # the task goes back to the queue, to run again
            runner.failures = failures  # its failures count when it runs again
            time.sleep(POLL)
        if session.shouldstop:
            self.queue.stop(str(session.shouldstop))

    def _start(self, runner: Runner, processor: Processor) -> Plan:
        # one worker at a time sets up fixtures (their writes commit on their own)
        with self.queue.setting_up(self.lock_key):
            return runner.start_processor(processor)

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
            problem: dict[str, Any] = {
                "scope": scope,
                "type": type(exc).__name__,
                "message": str(exc),
                "tb": tb,
            }
            with contextlib.suppress(Exception):
                self.queue.problem(problem)
