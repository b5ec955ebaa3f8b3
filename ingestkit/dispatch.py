"""A shared batch's queue in PostgreSQL: tasks out to workers, results back.

The leader puts items in ``ingestkit.tasks``, a chunk per row. A worker claims
a row with ``FOR UPDATE SKIP LOCKED`` inside the transaction that commits the
chunk's writes and outcomes, and deletes the row (or, if it stopped early,
shrinks it to what it did not run) in that same transaction. So every item is
committed exactly once, and a worker that dies gives its task back as soon as
PostgreSQL sees its connection close. The reports of a committed chunk go back
to the leader through ``ingestkit.results``, written in that transaction too.

Records travel as JSON, as ``--lf`` re-feeds them; keys and content hashes
are worked out once, by the leader.

A *file task* is one file of a glob for a worker to read whole (its ``items``
a JSON object: the file, the entries of it committed so far, whether any of
them failed). A worker holds it by a session advisory lock while it commits
the file chunk by chunk, each chunk moving the task's progress on in its
transaction, and deletes it with the file's ledger row at the end. A worker
that dies frees the lock; the next one reads the file again and runs it from
the first entry no chunk committed. Keys of file tasks are reserved per batch
(``ingestkit.batch_keys``) so that two files with the same key run it once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg2.extras import Json

from .queries import q
from .recorder import LOCK_NAMESPACE
from .reports import ItemReport
from .runner import Item
from .sources import _json_default

if TYPE_CHECKING:
    from pathlib import Path

    from .chunks import Chunk
    from .collection import Processor
    from .worker import FileTask

#: First key of the shared advisory locks each worker of a batch holds.
WORKER_NAMESPACE = 0x696B_0004
#: First key of the advisory lock a worker holds while it sets up fixtures.
SETUP_NAMESPACE = 0x696B_0005

_REPORT_FIELDS = (
    "key",
    "status",
    "attempt",
    "content_hash",
    "duration_ms",
    "error_type",
    "error_message",
    "traceback",
    "log",
    "payload",
    "finished_epoch",
    "location",
    "track",
)


def _dumps(value: Any) -> str:
    # ASCII: lone surrogates (undecodable bytes) survive the trip through a text column
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def items_to_json(items: list[Item]) -> str:
    return _dumps(
        [
            (
                it.key,
                it.record,
                it.location,
                it.content_hash,
                it.attempt,
                it.previous_error,
                it.entry_error,
                it.rerun,
                it.duplicate,
                it.first,
            )
            for it in items
        ]
    )


def items_from_json(processor: Processor, text: str) -> list[Item]:
    items = []
    for (
        key,
        record,
        location,
        chash,
        attempt,
        previous,
        entry_error,
        rerun,
        dup,
        first,
    ) in json.loads(text):
        item = Item(processor, record, location)
        item.key, item.nodeid = key, f"{processor.nodeid}[{key}]"
        item.content_hash, item.attempt, item.previous_error = chash, attempt, previous
        item.entry_error, item.rerun, item.duplicate = entry_error, rerun, dup
        item.first = (first[0], first[1]) if first else None
        items.append(item)
    return items


def reports_to_json(reports: list[ItemReport]) -> str:
    return _dumps([[getattr(r, f) for f in _REPORT_FIELDS] for r in reports])


def reports_from_json(processor: str, text: str) -> list[ItemReport]:
    return [
        ItemReport(processor, **dict(zip(_REPORT_FIELDS, row, strict=True)))
        for row in json.loads(text)
    ]


class BatchOver(Exception):
    """A worker's batch ended without it: it stops, and its chunk in flight is undone."""


@dataclass
class Task:
    """A claimed row of ``ingestkit.tasks``."""

    seq: int
    processor: str
    fresh: bool  # the processor had no recorded outcome before the batch
    items: str


@dataclass
class State:
    """What a worker with nothing to do checks."""

    options: dict[str, Any]
    fed: bool
    stop: str | None
    pending: bool
    status: str
    lock_key: int
    problems: list[dict[str, Any]]


class Queue:
    """One shared batch's queue; ``conn`` is an autocommit connection."""

    def __init__(self, conn: Any, batch_id: Any) -> None:
        self.conn = conn
        self.batch_id = batch_id
        self.seq = 0

    def _run(self, name: str, **params: Any) -> Any:
        cur = self.conn.cursor()
        cur.execute(q(name), {"batch_id": self.batch_id, **params})
        return cur

    # -- the leader ----------------------------------------------------------

    def open(self, options: dict[str, Any]) -> None:
        self._run("open-dispatch", options=Json(options))

    def put(self, processor: str, fresh: bool, items: list[Item]) -> None:
        self.seq += 1
        self._run(
            "put-task",
            seq=self.seq,
            processor=processor,
            fresh=fresh,
            size=len(items),
            items=items_to_json(items),
        )

    def put_file(self, processor: str, fresh: bool, path: Path) -> None:
        """Queue one file of a glob for a worker to read (a file task)."""
        self.seq += 1
        items = _dumps({"file": str(path), "done": 0, "failed": False})
        self._run("put-task", seq=self.seq, processor=processor, fresh=fresh, size=1, items=items)

    def pending(self) -> tuple[int, int, str | None]:
        """Tasks and items not yet committed by a worker, and why the batch stops."""
        with self._run("pending-tasks") as cur:
            tasks, items, stop = cur.fetchone()
        return tasks, int(items), stop

    def take_results(self) -> list[tuple[str, int, str]]:
        with self._run("take-results") as cur:
            rows: list[tuple[str, int, str]] = cur.fetchall()
        return rows

    def set_fed(self) -> None:
        self._run("set-fed").close()

    def stop(self, reason: str) -> None:
        self._run("set-stop", reason=reason).close()

    def close(self) -> None:
        self._run("drop-dispatch").close()

    def workers_alive(self, lock_key: int) -> bool:
        return self._lock_held(WORKER_NAMESPACE, lock_key)

    def live_workers(self, lock_key: int) -> int:
        """How many workers, local or joined, serve the batch now."""
        with self._run("count-workers", ns=WORKER_NAMESPACE, lock_key=lock_key) as cur:
            return int(cur.fetchone()[0])

    def leader_alive(self, lock_key: int) -> bool:
        return self._lock_held(LOCK_NAMESPACE, lock_key)

    def _lock_held(self, ns: int, lock_key: int) -> bool:
        with self._run("lock-held", ns=ns, lock_key=lock_key) as cur:
            return bool(cur.fetchone()[0])

    # -- workers -----------------------------------------------------------

    def state(self) -> State | None:
        with self._run("dispatch-state") as cur:
            row = cur.fetchone()
        return State(*row) if row else None

    def turn(self, processor: str, seq: int, pid: int) -> tuple[bool, bool]:
        """Whether task ``seq`` waits for earlier tasks, and whether it gives way to them.

        ``pid`` is the backend of the worker's chunk connection (``earlier-tasks``).
        """
        with self._run("earlier-tasks", processor=processor, seq=seq, pid=pid) as cur:
            wait, give_way = cur.fetchone()
        return bool(wait), bool(give_way)

    def problem(self, problem: dict[str, Any]) -> None:
        self._run("add-problem", problem=Json([problem])).close()

    def join(self, lock_key: int) -> None:
        self._run("lock-worker", ns=WORKER_NAMESPACE, lock_key=lock_key).close()

    def hold_file(self, lock_key: int, seq: int) -> bool:
        """Hold file task ``seq`` past its chunks' commits (False: another worker does)."""
        with self._run("hold-file-task", lock_key=lock_key, seq=seq) as cur:
            return bool(cur.fetchone()[0])

    def release_file(self, lock_key: int, seq: int) -> None:
        self._run("release-file-task", lock_key=lock_key, seq=seq).close()

    def reserve_keys(self, processor: str, items: list[Item]) -> dict[str, tuple[str | None, str]]:
        """Reserve the keys of a file task's chunk for it; those another file of the
        batch had first, with that record's content hash and location."""
        params = {
            "processor": processor,
            "keys": [it.key for it in items],
            "locations": [it.location for it in items],
            "hashes": [it.content_hash for it in items],
        }
        with self._run("reserve-keys", **params) as cur:
            mine = {row[0] for row in cur.fetchall()}
        taken = [it for it in items if it.key not in mine]
        if not taken:
            return {}
        ask = {"processor": processor, "keys": [it.key for it in taken]}
        with self._run("reserved-keys", **ask) as cur:
            first = {key: (chash, location) for key, chash, location in cur.fetchall()}
        # a key reserved at the same place is this file's (a worker before died)
        return {
            it.key: first[it.key]
            for it in taken
            if first.get(it.key, ("", it.location))[1] != it.location
        }

    @contextlib.contextmanager
    def setting_up(self, lock_key: int) -> Iterator[None]:
        """One worker at a time sets up fixtures (see ``lock-setup``)."""
        params = {"ns": SETUP_NAMESPACE, "lock_key": lock_key}
        self._run("lock-setup", **params).close()
        try:
            yield
        finally:
            self._run("unlock-setup", **params).close()

    def file_writes(self, chunk: Chunk, task: FileTask) -> Any:
        """The write that moves file task ``task`` on past ``chunk`` (or ends it)."""
        failed = task.failed or any(r.status in ("failed", "error") for r in chunk.reports)
        done = task.done if chunk.left else task.done + task.reading
        before = task.text
        task.done, task.reading, task.failed = done, 0, failed
        task.text = _dumps({"file": task.path, "done": done, "failed": failed})
        params = {
            "batch_id": self.batch_id,
            "seq": task.seq,
            "processor": task.processor,
            "before": before,
            "items": task.text,
            "unchanged": chunk.unchanged,
            "reports": reports_to_json(chunk.reports),
        }
        end = task.ended

        def write(cur: Any) -> None:
            cur.execute(q("batch-still-running"), params)
            if cur.fetchone() is None:
                raise BatchOver("the batch is over (its leader died): this chunk is undone")
            cur.execute(q("end-file-task" if end else "move-file-task"), params)
            if cur.rowcount != 1:  # another worker took the task on (this one was cut off)
                raise RuntimeError(f"file task {task.seq} of batch {self.batch_id} was not ours")
            if chunk.reports or chunk.unchanged:
                cur.execute(q("put-result"), params)

        return write

    def finish_writes(self, chunk: Chunk) -> Any:
        """The write that ends ``chunk``'s task, in the chunk's transaction."""
        task: Task = chunk.task
        left = chunk.left
        params = {
            "batch_id": self.batch_id,
            "seq": task.seq,
            "processor": task.processor,
            "unchanged": chunk.unchanged,
            "reports": reports_to_json(chunk.reports),
            "items": items_to_json(left) if left else None,
            "size": len(left),
        }

        def write(cur: Any) -> None:
            cur.execute(q("batch-still-running"), params)
            if cur.fetchone() is None:
                raise BatchOver("the batch is over (its leader died): this chunk is undone")
            cur.execute(q("shrink-task" if left else "finish-task"), params)
            if cur.rowcount != 1:  # the claim was lost (the transaction ended early)
                raise RuntimeError(f"task {task.seq} of batch {self.batch_id} was not ours")
            cur.execute(q("put-result"), params)

        return write
