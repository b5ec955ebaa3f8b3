"""The leader of ``-n N`` (plugin ``leader``, registered by ``workers``).

The leader runs the batch's processors as one process does, with the
in-process :class:`~ingestkit.runner.Runner`, but its ``ingestkit_chunk_run``
queues each chunk as a task (:mod:`ingestkit.dispatch`) instead of running
it; its workers (:mod:`ingestkit.worker`) set up the fixtures and run the
items. It reports what the workers commit as the runner reports its own.

A folder of files (a glob read in full) is split by file: the leader hashes
each file for the ledger and queues the files that need reading, one task
each (``ingestkit_file_dispatch``); a worker reads the whole file itself.
Two files of a batch with the same key: the worker that reaches the key first
runs it, the other gets a ``DuplicateKey`` failure naming where it was first.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

from .chunks import COMMITTED_ELSEWHERE, Chunk
from .dispatch import Queue, reports_from_json
from .readers import FileReader
from .recorder import is_new, store_payloads
from .runner import FIRST_CHUNK, Item, Plan, Runner

if TYPE_CHECKING:
    from .collection import Processor
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Largest task the leader queues: small enough to spread a batch over workers.
MAX_TASK = 1000
#: Seconds of processor time a task is sized for, once items' durations are known.
TASK_SECONDS = 0.2
#: Seconds between the leader's looks at the queue.
POLL = 0.01
#: The leader takes the workers' results at least this often (seconds) while feeding.
DRAIN_EVERY = 0.1
#: Tasks queued ahead per live worker, and how often (seconds) the leader counts them.
AHEAD_PER_WORKER, COUNT_EVERY = 3, 1.0
#: Seconds between the leader's looks at a worker it waits for at the batch's end.
EXIT_POLL = 0.2
#: Options a worker takes from the batch it joins, whatever its own command line says.
BATCH_OPTIONS = ("reprocess", "maxfail", "item_timeout", "store_payloads", "chunk_size", "lease")


class WorkerError(Exception):
    """An error a worker reported through the queue."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class Leader:
    """Feeds the queue and reports what the workers commit."""

    def __init__(self, session: Session, workers: int, queue: Queue) -> None:
        self.session = session
        self.config = session.config
        self.config.stash[COMMITTED_ELSEWHERE] = True
        self.workers = workers
        self.queue = queue
        self.runner = Runner(session, setup_fixtures=False)  # the workers set them up
        self.procs: list[subprocess.Popen[bytes]] = []
        self.by_nodeid = {p.nodeid: p for p in session.processors}
        self.fixed_chunk = self.config.option.chunk_size
        self.task_size = self.fixed_chunk or FIRST_CHUNK
        self.room = max(4, AHEAD_PER_WORKER * workers)  # tasks queued ahead of the workers
        self.counted = time.monotonic()  # when the live workers were last counted
        self.reported = 0  # items whose reports came back
        self.reported_seconds = 0.0  # and the time the processors spent on them
        self.drained = 0.0  # when the results were last taken
        self.stop_sent = False
        assert session.batch.lock_key is not None, "the batch row was made"
        self.lock_key: int = session.batch.lock_key

    def run(self) -> None:
        option = self.config.option
        self.queue.open(
            {name: getattr(option, name) for name in BATCH_OPTIONS}
            | {"store_payloads": store_payloads(self.config)}
            | {"processors": [p.nodeid for p in self.session.processors]}
        )
        if self.session.processors:  # (none: only collection errors to report)
            self.spawn()
        try:
            self.runner.run()
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
        env = dict(os.environ, INGESTKIT_DSN=self.session.dsn or "")
        for _ in range(self.workers):
            self.procs.append(
                subprocess.Popen(
                    argv, cwd=config.invocation_dir, env=env, stdout=subprocess.DEVNULL
                )
            )

    def wait_for_workers(self) -> None:
        """Let the workers finish what they hold; then take their last results.

        A worker that is paused (SIGSTOP, a frozen container) is not waited for once
        nothing is left in the queue: it holds no task, and its lease ends its claims.
        """
        try:
            for number, proc in enumerate(self.procs, 1):
                while proc.poll() is None:
                    try:
                        proc.wait(timeout=EXIT_POLL)
                    except subprocess.TimeoutExpired:
                        if _paused(proc.pid) and self._nothing_queued():
                            self.session.warnings.append(
                                f"worker {number} (pid {proc.pid}) is paused; the leader did "
                                "not wait for it: nothing was left in the queue"
                            )
                            break
        finally:
            try:
                self.complete()
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

    # -- the hooks: chunks go to the queue ----------------------------------

    @hookimpl
    def ingestkit_chunk_run(self, plan: Plan, items: list[Item]) -> bool:
        """Queue the chunk as tasks, a few ahead of the workers."""
        processor = plan.processor
        fresh = is_new(self.session, processor.nodeid)
        try:
            for start in range(0, len(items), self.task_size):
                self.queue.put(processor.nodeid, fresh, items[start : start + self.task_size])
                self._wait(lambda tasks, _items: tasks < self._room())
        except BaseException:  # Ctrl-C, a lost connection: nothing more is queued
            self.session.shouldstop = self.session.shouldstop or "the leader stopped"
            raise
        if self.reported and not self.fixed_chunk:
            # tasks of about TASK_SECONDS each: few round trips, and an even spread
            per_item = max(self.reported_seconds / self.reported, 1e-6)
            self.task_size = max(FIRST_CHUNK, min(int(TASK_SECONDS / per_item), MAX_TASK))
        self.runner.chunk_size = self.task_size  # read the source a task at a time
        return True

    @hookimpl
    def ingestkit_file_dispatch(self, processor: Processor, path: Path) -> bool | None:
        """Queue a file of a glob read in full for a worker to read whole."""
        option = self.config.option
        src = processor.source.src if processor.source is not None else None
        if not isinstance(src, FileReader) or not src.is_glob:
            return None  # one file: the leader reads it, its chunks spread over the workers
        if processor.selected_keys is not None:
            return None
        if option.last_failed or option.failed_first:
            return None  # re-fed keys first: the reading skips them (see Runner._wanted)
        try:
            self.queue.put_file(processor.nodeid, is_new(self.session, processor.nodeid), path)
            self._wait(lambda tasks, _items: tasks < self._room())
        except BaseException:
            self.session.shouldstop = self.session.shouldstop or "the leader stopped"
            raise
        return True

    @hookimpl(tryfirst=True)
    def ingestkit_processor_finish(self, processor: Processor) -> None:
        """Wait for every task of the processor: the next one may need its writes."""
        session = self.session
        if self.runner.broken_off:  # Ctrl-C, a lost connection: nothing more is queued
            session.shouldstop = session.shouldstop or "the leader stopped"
            return
        if processor is session.processors[-1] and not session.shouldstop:
            self.queue.set_fed()  # workers leave once the queue is empty
        self._wait(lambda tasks, _items: tasks == 0)
        self.complete()

    @hookimpl
    def ingestkit_batch_finish(self) -> None:
        with contextlib.suppress(Exception):  # a lost connection: the next run cleans up
            self.queue.close()

    def _room(self) -> int:
        """How many tasks to keep queued: a few per worker serving the batch now
        (joined workers included), counted every COUNT_EVERY seconds."""
        now = time.monotonic()
        if now - self.counted > COUNT_EVERY:
            self.counted = now
            self.room = max(4, AHEAD_PER_WORKER * self.queue.live_workers(self.lock_key))
        return self.room

    def _nothing_queued(self) -> bool:
        """No task is left (or the batch stopped); False when the queue cannot tell."""
        try:
            tasks, _items, stop = self.queue.pending()
        except Exception:  # a lost connection: wait as before
            return False
        return tasks == 0 or bool(stop)

    # -- results -------------------------------------------------------------

    def _wait(self, ready: Callable[[int, int], bool]) -> None:
        session = self.session
        while not session.shouldstop:
            tasks, items, stop = self.queue.pending()
            if stop and not session.shouldstop:  # a worker stopped the batch (-x, Ctrl-C)
                session.shouldstop = stop
                break
            if ready(tasks, items):
                if time.monotonic() - self.drained > DRAIN_EVERY:
                    self.complete()
                return
            self.complete()
            if self.procs and all(p.poll() is not None for p in self.procs):
                if not self.queue.workers_alive(self.lock_key):
                    session.fatal = (
                        f"every worker exited; {items:,} queued items were not processed"
                    )
                    session.shouldstop = "every worker exited"
                    return
            time.sleep(POLL)

    def complete(self) -> None:
        """Report the chunks committed: the leader's own (a broken source), the workers'."""
        self.runner.complete()
        session = self.session
        self.drained = time.monotonic()
        with self.runner.txn.uninterrupted():  # results taken from the queue are counted
            self._take_results()
        if session.shouldstop and not self.stop_sent:
            self.stop_sent = True
            self.queue.stop(str(session.shouldstop))

    def _take_results(self) -> None:
        runner = self.runner
        for nodeid, unchanged, reports in self.queue.take_results():
            processor = self.by_nodeid.get(nodeid)
            if processor is None:
                continue
            chunk = Chunk(processor, reports_from_json(nodeid, reports), unchanged)
            runner.report(chunk)
            self.reported += len(chunk.reports)
            for report in chunk.reports:
                self.reported_seconds += report.duration_ms / 1000.0
                if report.failed:
                    runner.count_failure()


def _paused(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP); False where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"T", b"t")
