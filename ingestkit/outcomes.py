"""Exceptions and outcome helpers a processor can use (`skip`) or meet."""

from __future__ import annotations

from typing import Any


class Skipped(Exception):
    """Raised by :func:`skip` to mark the current item ``skipped``."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def skip(reason: str = "") -> None:
    """Stop the current item and record it as ``skipped`` with ``reason``."""
    raise Skipped(reason)


class LookupMissing(LookupError):
    """``lookup(table, **match)`` found no row."""

    def __init__(self, table: str, match: dict[str, Any]) -> None:
        shown = ", ".join(f"{k}={v!r}" for k, v in match.items())
        super().__init__(f"no row in {table} where {shown}")
        self.table = table
        self.match = match


class UsageError(Exception):
    """A problem with how ingestkit was invoked: one line, exit code 4."""


class FixtureLookupError(LookupError):
    """A processor or fixture requested a fixture that does not exist."""


class TeardownErrors(ExceptionGroup):
    """Several finalizers of one item raised; all of them are reported, as in pytest."""

    def __str__(self) -> str:
        parts = "; ".join(f"{type(e).__name__}: {e}" for e in self.exceptions)
        return f"{len(self.exceptions)} errors while tearing down fixtures: {parts}"

    def __new__(cls, errors: list[Exception]) -> TeardownErrors:  # noqa: D102
        return super().__new__(cls, "errors while tearing down fixtures", errors)

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__("errors while tearing down fixtures", errors)


class ScopeMismatch(Exception):
    """A wider-scoped fixture requested a narrower-scoped one."""


class RecordError(Exception):
    """A record could not be read or keyed; the item is an ``error``."""


class ItemTimeout(Exception):
    """An item ran longer than ``--item-timeout``."""
