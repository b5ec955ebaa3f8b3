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
    """Installs the handler for the batch and removes it after.

    ``level`` (``--log-level``, default INFO) is the lowest level stored; the
    root logger is lowered to it for the batch, as pytest's log capture does,
    else Python's default (WARNING) would drop INFO lines before any handler.
    """

    def __init__(self, level: int | str | None = None) -> None:
        name = level or "INFO"
        self.level: int = (
            logging.getLevelNamesMapping()[name.upper()] if isinstance(name, str) else name
        )
        self.handler = ItemLogHandler()
        self.handler.setLevel(self.level)
        self.logger = logging.getLogger(ITEM_LOGGER)
        self._old_level = self.logger.level
        self._old_root = logging.getLogger().level

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        root.addHandler(self.handler)
        self._old_root = root.level
        if root.level == logging.NOTSET or root.level > self.level:
            root.setLevel(self.level)
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self._old_root)
        self.logger.setLevel(self._old_level)
