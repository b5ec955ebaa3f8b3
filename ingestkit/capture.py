"""Per-item log capture: what an item logs is stored with its outcome."""

from __future__ import annotations

import logging

ITEM_LOGGER = "ingestkit.item"


class ItemLogHandler(logging.Handler):
    """A root handler that collects records into the running item's buffer."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.lines is not None:
            try:
                self.lines.append(self.format(record))
            except Exception:  # pragma: no cover - a broken log call must not fail the item
                self.handleError(record)

    def start(self) -> None:
        self.lines = []

    def stop(self) -> str | None:
        lines, self.lines = self.lines, None
        return "\n".join(lines) if lines else None


class LogCapture:
    """Installs the handler for the batch and removes it after."""

    def __init__(self) -> None:
        self.handler = ItemLogHandler()
        self.logger = logging.getLogger(ITEM_LOGGER)
        self._old_level = self.logger.level

    def __enter__(self) -> LogCapture:
        logging.getLogger().addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.logger.setLevel(self._old_level)
