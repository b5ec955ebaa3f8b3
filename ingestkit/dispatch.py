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
    from .chunks import Chunk
    from .collection import Processor

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
            )
            for it in items
        ]
    )


def items_from_json(processor: Processor, text: str) -> list[Item]:
    items = []
    for key, record, location, chash, attempt, previous, entry_error, rerun, dup in json.loads(
        text
    ):
        item = Item(processor, record, location)
        item.key, item.nodeid = key, f"{processor.nodeid}[{key}]"
        item.content_hash, item.attempt, item.previous_error = chash, attempt, previous
        item.entry_error, item.rerun, item.duplicate = entry_error, rerun, dup
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

    @contextlib.contextmanager
    def setting_up(self, lock_key: int) -> Iterator[None]:
        """One worker at a time sets up fixtures (see ``lock-setup``)."""
        params = {"ns": SETUP_NAMESPACE, "lock_key": lock_key}
        self._run("lock-setup", **params).close()
        try:
            yield
        finally:
            self._run("unlock-setup", **params).close()

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
