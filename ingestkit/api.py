"""``ingestkit.run(args)``: one batch in-process, for schedulers.

A cron wrapper, an Airflow or Dagster task, a Celery or procrastinate job calls
``ingestkit.run([...])`` with the arguments of the ``ingestkit`` command and gets
a :class:`BatchResult` back instead of an exit status to parse: the exit code,
the batch's id (its row in ``ingestkit.batches``), its counts and its failures.
Output goes to stdout and stderr as the command's does (the scheduler's log).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from .reports import COUNTED

if TYPE_CHECKING:
    from .chunks import Chunk
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")


@dataclass(frozen=True, slots=True)
class Failure:
    """A ``failed`` or ``error`` item of the batch, as recorded in ``ingestkit.items``."""

    processor: str
    key: str
    status: str
    error_type: str | None
    error_message: str | None

    @property
    def nodeid(self) -> str:
        """``path::process_x[KEY]``: what ``--trace`` and node-id selection take."""
        return f"{self.processor}[{self.key}]"


@dataclass
class BatchResult:
    """What :func:`run` did.

    ``exit_code`` is the command's (0 ok, 1 items failed, 2 interrupted, 3
    internal error, 4 usage error, 5 nothing collected). ``batch_id`` is the
    batch's id, or ``None`` when no batch was recorded (a usage error, ``--lf``
    with nothing to rerun, a looking-back command). ``counts`` has every status
    and ``unchanged``, as ``ingestkit.batches.counts``; ``failures`` the items
    that failed or errored, in the order they finished.
    """

    exit_code: int
    batch_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class _Watch:
    """A plugin that keeps what :class:`BatchResult` reports, as the batch runs."""

    def __init__(self) -> None:
        self.batch_id: str | None = None
        self.counts: dict[str, int] = {}
        self.failures: list[Failure] = []

    @hookimpl
    def ingestkit_batch_start(self, session: Session) -> None:
        self.batch_id = str(session.batch.id)

    @hookimpl
    def ingestkit_chunk_finish(self, session: Session, chunk: Chunk) -> None:
        for r in chunk.reports:
            if r.status in ("failed", "error"):
                self.failures.append(
                    Failure(r.processor, r.key, r.status, r.error_type, r.error_message)
                )

    @hookimpl
    def ingestkit_batch_finish(self, session: Session, exitstatus: int) -> None:
        self.counts = {name: session.counts.get(name, 0) for name in COUNTED}


def run(args: Sequence[str] | str, plugins: Iterable[Any] = ()) -> BatchResult:
    """Run one batch in-process, as ``ingestkit ARGS`` would; never raises for
    what the command reports with an exit code.

    ``args`` are the command's arguments (a string is split as a shell would);
    ``plugins`` are registered for this run, as ``-p`` plugins.
    """
    from .cli import main

    argv = shlex.split(args) if isinstance(args, str) else list(args)
    watch = _Watch()
    code = main(argv, plugins=[*plugins, watch])
    return BatchResult(int(code), watch.batch_id, watch.counts, watch.failures)
