"""What one item's run produced: the report the recorder and reporters read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

STATUSES = ("succeeded", "failed", "error", "skipped")
#: Counted in a batch's ``counts``: the statuses plus ``unchanged``.
COUNTED = (*STATUSES, "unchanged")


@dataclass(slots=True, eq=False)
class ItemReport:
    processor: str  # node id
    key: str
    status: str
    attempt: int = 1
    content_hash: str | None = None
    duration_ms: float = 0.0
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    log: str | None = None
    payload: str | None = None  # JSON text of the record
    finished_epoch: float = 0.0
    location: str | None = None
    track: bool = True  # False: not the (processor, key)'s state (e.g. a duplicate)

    @property
    def nodeid(self) -> str:
        return f"{self.processor}[{self.key}]"

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "error")


class History(NamedTuple):
    """The latest recorded outcome of one (processor, key)."""

    status: str
    attempt: int
    error_message: str | None
    succeeded_hash: str | None  # content of the last success (its writes are in place)


_SHAPE = re.compile(r"'[^']*'|\"[^\"]*\"|\b\d+(?:\.\d+)?\b|0x[0-9a-f]+", re.I)


def message_shape(message: str | None) -> str:
    """A message with quoted values and numbers blanked, to group alike failures."""
    first = (message or "").strip().splitlines()[:1]
    return _SHAPE.sub("…", first[0]) if first else ""
