"""The chunk protocol: the unit that runs, commits and is reported together.

A processor's items are read from its source a chunk at a time. Each chunk
goes to the firstresult hook ``ingestkit_chunk_run``, whose implementation is
the run mode:

- in one process (:mod:`ingestkit.runner`): run the items and commit them
  with their outcome rows;
- the leader of ``-n`` (:mod:`ingestkit.leader`): queue them as a task;
- a worker (:mod:`ingestkit.worker`): claims a queued task and runs it with
  :meth:`ingestkit.runner.Runner.run_chunk`, its claim in the chunk's transaction.

Whichever process commits a chunk calls ``ingestkit_chunk_commit`` (plugins add
what commits with it: the outcome rows, the task's deletion) and, once it has
committed, ``ingestkit_chunk_finish`` (the leader calls it for the chunks its
workers committed).

A folder of files is split by file under ``-n``: the leader's file ledger
hands each file that needs reading to ``ingestkit_file_dispatch``, the leader
queues it as one task, and the worker that claims it reads the whole file,
committing its chunks with the task's progress (:class:`ingestkit.worker.FileTask`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .stash import StashKey

if TYPE_CHECKING:
    from .collection import Processor
    from .reports import ItemReport
    from .runner import Item

#: True in a process whose chunks other processes commit (the leader of ``-n``): what
#: would commit with its chunks (a file's ledger row) waits for the batch's end.
COMMITTED_ELSEWHERE = StashKey[bool]()


class Claim(Protocol):
    """A worker's hold on the queued task a chunk's items came from."""

    def regain(self) -> None:
        """Take the claim back after an item's ROLLBACK released it."""

    def wait_turn(self) -> None:
        """Wait, before the chunk's rows are written, for the tasks before it to commit."""


@dataclass
class Chunk:
    """The items of one processor that commit together."""

    processor: Processor
    reports: list[ItemReport] = field(default_factory=list)
    unchanged: int = 0
    restored: list[str] = field(default_factory=list)  # unchanged, back to a success
    #: what commits with the chunk: ``write(cursor)`` callables (see ingestkit_chunk_commit)
    writes: list[Callable[[Any], None]] = field(default_factory=list)
    #: the queued task the items came from, when a worker runs them (see worker.py)
    task: Any = None
    #: items not run because the batch is stopping
    left: list[Item] = field(default_factory=list)
