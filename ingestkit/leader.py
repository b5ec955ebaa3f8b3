"""The leader of ``-n N`` (plugin ``leader``, registered by ``workers``).

The leader runs the batch's processors as one process does, with the
in-process :class:`~ingestkit.runner.Runner`, but its ``ingestkit_chunk_run``
queues each chunk as a task (:mod:`ingestkit.dispatch`) instead of running
it; its workers (:mod:`ingestkit.worker`) set up the fixtures and run the
items. It reports what the workers commit as the runner reports its own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

from .chunks import Chunk
from .dispatch import Queue, reports_from_json
from .recorder import store_payloads
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
        self.workers = workers
        self.queue = queue
        self.runner = Runner(session, setup_fixtures=False)  # the workers set them up
        self.procs: list[subprocess.Popen[bytes]] = []
        self.by_nodeid = {p.nodeid: p for p in session.processors}
        self.fixed_chunk = self.config.option.chunk_size
        self.task_size = self.fixed_chunk or FIRST_CHUNK
        self.room = max(4, 3 * workers)  # tasks queued ahead of the workers
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
        """Let the workers finish what they hold; then take their last results."""
        try:
            for proc in self.procs:
                proc.wait()
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
        from .recorder import is_new

        processor = plan.processor
        fresh = is_new(self.session, processor.nodeid)
        try:
            for start in range(0, len(items), self.task_size):
                self.queue.put(processor.nodeid, fresh, items[start : start + self.task_size])
                self._wait(lambda tasks, _items: tasks < self.room)
        except BaseException:  # Ctrl-C, a lost connection: nothing more is queued
            self.session.shouldstop = self.session.shouldstop or "the leader stopped"
            raise
        if self.reported and not self.fixed_chunk:
            # tasks of about TASK_SECONDS each: few round trips, and an even spread
            per_item = max(self.reported_seconds / self.reported, 1e-6)
            self.task_size = max(FIRST_CHUNK, min(int(TASK_SECONDS / per_item), MAX_TASK))
        self.runner.chunk_size = self.task_size  # read the source a task at a time
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
