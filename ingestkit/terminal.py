"""The terminal reporter (plugin ``terminal``): header, progress, summary."""

from __future__ import annotations

import contextlib
import heapq
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import pluggy

from . import __version__
from .fixtures import FixtureRequest
from .reports import COUNTED, ItemReport, message_shape

if TYPE_CHECKING:
    from .chunks import Chunk
    from .collection import CollectReport, Processor
    from .config import ArgumentParser as Parser
    from .config import Config
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Plain (non-terminal) progress prints at most one line per processor this often.
PLAIN_PROGRESS_SECONDS = 10.0
GROUP_SAMPLE_KEYS = 5
#: ANSI SGR codes of the markup names ``write_line`` takes.
MARKUP = {"bold": "1", "red": "31", "green": "32", "yellow": "33", "cyan": "36", "gray": "90"}
#: Status words and their colour.
STATUS_COLORS = {
    "succeeded": "green",
    "failed": "red",
    "error": "red",
    "skipped": "yellow",
    "unchanged": "gray",
}
#: ``-r`` characters and the statuses they add to the short summary (as pytest's).
REPORT_CHARS = {"f": ("failed",), "E": ("error",), "s": ("skipped",)}


def use_color(choice: str, isatty: bool) -> bool:
    """``--color``: yes, no, or auto (a terminal; ``NO_COLOR`` off, ``FORCE_COLOR`` on)."""
    if choice in ("yes", "no"):
        return choice == "yes"
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR") or os.environ.get("PY_COLORS") == "1":
        return True
    return isatty and os.environ.get("TERM") != "dumb"


def terminal_width(isatty: bool) -> int:
    """The terminal's columns (``COLUMNS`` wins); 80 when not on a terminal."""
    if os.environ.get("COLUMNS", "").isdigit():
        return max(int(os.environ["COLUMNS"]), 40)
    if not isatty:
        return 80
    return max(shutil.get_terminal_size((80, 24)).columns, 40)


def summary_statuses(chars: str) -> set[str]:
    """The statuses that ``-r chars`` lists in the short summary."""
    if "N" in chars:
        return set()
    if "a" in chars or "A" in chars:
        return {"failed", "error", "skipped"}
    return {status for c in chars for status in REPORT_CHARS.get(c, ())}


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    if seconds >= 60:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds:.0f}s"


@dataclass
class FailureGroup:
    processor: str
    error_type: str
    shape: str
    count: int = 0
    keys: list[str] = field(default_factory=list)
    first: ItemReport | None = None


#: Control characters (but newline and tab) and lone surrogates, as escapes: data
#: in keys, messages and records never moves the cursor, rings or retitles.
_ESCAPE_CONTROLS = {
    c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c not in (0x09, 0x0A)
} | {c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)}


def printable(text: str) -> str:
    """``text`` safe to show on a terminal (control characters escaped)."""
    if text.isascii() and text.isprintable():
        return text
    return text.translate(_ESCAPE_CONTROLS)


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s" if seconds > 0 else "-"


class TerminalReporter:
    def __init__(self, config: Config, file: TextIO | None = None) -> None:
        self.config = config
        self._file = file
        option = config.option
        self.verbosity = option.verbose - option.quiet
        self.tb = option.tb
        self.groups: dict[tuple[str, str, str], FailureGroup] = {}
        self.proc_counts: dict[str, int] = {}
        self.proc_failed = 0
        self.proc_started = 0.0
        self.last_plain = 0.0
        self.current: Processor | None = None
        self.total: int | None = None
        self.isatty = bool(getattr(self.file, "isatty", lambda: False)())
        self.color = use_color(getattr(option, "color", "auto") or "auto", self.isatty)
        self.width = terminal_width(self.isatty)
        self.report_chars = summary_statuses(getattr(option, "reportchars", "fE") or "")
        self.durations: int | None = getattr(option, "durations", None)
        self.slowest: list[tuple[float, int, ItemReport]] = []
        self.skips: dict[tuple[str, str], FailureGroup] = {}
        self._line_open = False

    @property
    def file(self) -> TextIO:
        return self._file or sys.stdout

    def markup(self, text: str, *names: str) -> str:
        """``text`` in the colours/styles ``names`` (``red``, ``bold``...) when colour is on."""
        codes = ";".join(MARKUP[n] for n in names if n in MARKUP)
        if not self.color or not codes or not text:
            return text
        return f"\x1b[{codes}m{text}\x1b[0m"

    def write_line(self, line: str = "", *markup: str) -> None:
        self.write_parts((line, markup))

    def write_parts(self, *parts: tuple[str, tuple[str, ...]]) -> None:
        """One line of ``(text, markup)`` parts, each masked, escaped, then coloured."""
        text = "".join(self.markup(printable(self.config.mask(t)), *m) for t, m in parts) + "\n"
        if self._line_open:  # replace the progress line
            text = "\r\x1b[K" + text
            self._line_open = False
        self._write(text)

    def write_status(self, line: str) -> None:
        """A progress line that the next one overwrites (on a terminal)."""
        self._write("\r" + printable(line[: self.width - 1]) + "\x1b[K")
        self._line_open = True

    def _write(self, text: str) -> None:
        try:
            self.file.write(text)
            self.file.flush()
        except BrokenPipeError:
            # output piped into `head` and the like: the batch goes on, unseen
            devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull.fileno(), self.file.fileno())
            self._file = devnull

    def section(self, title: str, sep: str = "=", *markup: str) -> None:
        text = f" {title} "
        side = max(3, (self.width - len(text)) // 2)
        self.write_line(f"{sep * side}{text}{sep * side}", *markup)

    # -- header and collection ---------------------------------------------

    def header(self, session: Session) -> None:
        if self.verbosity < 0:
            return
        config = self.config
        self.section("ingestkit session starts")
        inifile = f", config: {config.inipath.name}" if config.inipath else ""
        if config.inipath is None and config.rootdir != config.invocation_dir.resolve():
            # no config file: an .ingestkit/ further up chose the rootdir (config.find_rootdir)
            inifile = (
                " (from the .ingestkit/ folder there, left by an earlier run; no config file found)"
            )
        self.write_line(f"ingestkit {__version__}, rootdir: {config.rootdir}{inifile}")
        masked, origin = session.database or ("?", "?")
        if origin == "embedded":
            where = "embedded PostgreSQL under .ingestkit/pgdata (no server needed)"
        else:
            where = f"{masked} (from {origin})"
        self.write_line(f"database: {where}")
        mode = " (dry run: every write is rolled back)" if session.batch.dry_run else ""
        self.write_line(f"batch: {session.batch.id}{mode}")
        for lines in config.hook.ingestkit_report_header(config=config):
            for line in [lines] if isinstance(lines, str) else lines:
                self.write_line(line)
        for note in session.notes:
            self.write_line(note)
        if session.interrupted_batches:
            shown = ", ".join(session.interrupted_batches)
            self.write_line(f"marked interrupted (their process died): {shown}")
        n = len(session.processors)
        self.write_line(f"collected {n} processor{'s' if n != 1 else ''}")
        self.write_line()

    # -- progress ----------------------------------------------------------

    def processor_start(self, processor: Processor) -> None:
        self.current = processor
        src = processor.source.src if processor.source else None
        self.src = src
        self.total = len(src) if isinstance(src, Sized) and not isinstance(src, str) else None
        if self.total is None and isinstance(getattr(src, "total", None), int):
            self.total = src.total  # type: ignore[union-attr]
        self.proc_counts = {}
        self.proc_failed = 0
        self.proc_started = self.last_plain = time.perf_counter()

    def chunk_finish(self, chunk: Chunk) -> None:
        for report in chunk.reports:
            self.proc_counts[report.status] = self.proc_counts.get(report.status, 0) + 1
            if report.failed:
                self.proc_failed += 1
                self._group(report)
            elif report.status == "skipped":
                self._skip(report)
            if self.durations:
                entry = (report.duration_ms, id(report), report)
                if len(self.slowest) < self.durations:
                    heapq.heappush(self.slowest, entry)
                elif entry[0] > self.slowest[0][0]:
                    heapq.heapreplace(self.slowest, entry)
        if chunk.unchanged:
            self.proc_counts["unchanged"] = self.proc_counts.get("unchanged", 0) + chunk.unchanged
        if self.verbosity > 0:
            for report in chunk.reports:
                status = (report.status.upper(), (STATUS_COLORS[report.status],))
                self.write_parts((f"{report.nodeid} ", ()), status)
            return
        if self.verbosity < 0:
            return
        now = time.perf_counter()
        if self.isatty:
            self.write_status(self._progress(now))
        elif now - self.last_plain >= PLAIN_PROGRESS_SECONDS:
            self.last_plain = now
            self.write_line(self._progress(now))

    def _share(self, done: int) -> tuple[float | None, str]:
        """How far the processor is (0..1 or None) and the count shown with it:
        items of a source of known length, else bytes of a file source."""
        if self.total:
            return min(done / self.total, 1.0), f"{done:,}/{self.total:,}"
        size = getattr(self.src, "bytes_total", None)
        read = getattr(self.src, "bytes_read", None)
        if isinstance(size, int) and size > 0 and isinstance(read, int):
            mb = f"{read / 1e6:,.1f}/{size / 1e6:,.1f} MB"
            return min(read / size, 1.0), f"{done:,} items, {mb}"
        return None, f"{done:,} items"

    def _progress(self, now: float) -> str:
        """One progress line, as wide as the terminal: node id, bar, count, rate, ETA.

        Too narrow a terminal drops the ETA, then the bar.
        """
        done = sum(self.proc_counts.values())
        nodeid = self.current.nodeid if self.current else ""
        elapsed = now - self.proc_started
        share, count = self._share(done)
        eta = None
        if share is not None and 0 < share < 1 and elapsed > 0:
            eta = f"ETA {_duration(elapsed * (1 - share) / share)}"
        failed = f"{self.proc_failed:,} failed" if self.proc_failed else None
        rate = _rate(done, elapsed)
        full = " · ".join(p for p in (count, rate, eta, failed) if p)
        if share is None or not self.isatty:
            return f"{nodeid} {full}"
        for tail in (full, " · ".join(p for p in (count, rate, failed) if p)):
            room = self.width - len(nodeid) - len(tail) - 10
            if room >= 10:
                filled = int(share * room)
                return f"{nodeid} [{'#' * filled}{' ' * (room - filled)}] {share:4.0%} {tail}"
        return f"{nodeid} {share:4.0%} {full}"

    def processor_finish(self, processor: Processor) -> None:
        if self.verbosity < 0:
            return
        elapsed = time.perf_counter() - self.proc_started
        counts = (
            ", ".join(f"{self.proc_counts[s]:,} {s}" for s in COUNTED if self.proc_counts.get(s))
            or "no items"
        )
        self.write_line(f"{processor.nodeid} {counts} in {elapsed:.2f}s")

    def _group(self, report: ItemReport) -> None:
        key = (report.processor, report.error_type or "", message_shape(report.error_message))
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = FailureGroup(*key)
            group.first = report
        group.count += 1
        if len(group.keys) < GROUP_SAMPLE_KEYS:
            group.keys.append(report.key)

    def _skip(self, report: ItemReport) -> None:
        key = (report.processor, message_shape(report.error_message))
        group = self.skips.get(key)
        if group is None:
            group = self.skips[key] = FailureGroup(report.processor, "skipped", key[1])
            group.first = report
        group.count += 1
        if len(group.keys) < GROUP_SAMPLE_KEYS:
            group.keys.append(report.key)

    # -- summary -----------------------------------------------------------

    def summary(self, session: Session, exitstatus: int) -> None:
        if session.collect_errors:
            self.section("ERRORS")
            for report in session.collect_errors:
                self.section(f"ERROR collecting {report.nodeid}", "_")
                self.write_line(report.message)
                if self.tb == "long":
                    self.write_line(report.longrepr.rstrip())
        if self.groups and self.tb != "no":
            self.section("FAILURES", "=", "red")
            for group in sorted(self.groups.values(), key=lambda g: -g.count):
                self._show_group(group)
        if self.durations:
            self.section(f"slowest {self.durations} durations")
            for ms, _, slow in sorted(self.slowest, reverse=True):
                self.write_line(f"{ms / 1000:.3f}s {slow.status:<9} {slow.nodeid}")
        self._short_summary()
        if session.teardown_errors:
            self.section("TEARDOWN ERRORS")
            for scope, exc, tb in session.teardown_errors:
                name = getattr(exc, "type_name", type(exc).__name__)  # a worker's, by name
                self.write_line(f"{scope}-scoped fixture teardown: {name}: {exc}")
                if self.tb in ("long", "short"):
                    self.write_line(tb.rstrip())
        for warning in session.warnings:
            self.write_line(f"WARNING: {warning}")
        self.config.hook.ingestkit_terminal_summary(
            terminalreporter=self, exitstatus=exitstatus, config=self.config
        )
        if session.fatal:
            self.write_line(f"ERROR: {session.fatal}")
            self.write_line("committed items stay committed; run again to finish the rest")
        elif session.shouldstop and session.processors:
            self.write_line(
                f"!!! {session.shouldstop}: the rest of the batch was not processed !!!"
            )
        self._final_line(session)
        if (session.counts["failed"] or session.counts["error"]) and not session.batch.dry_run:
            # after a dry run --lf has nothing to rerun: nothing of it was recorded
            self.write_parts(("rerun the failures: ", ()), (self.rerun_command(), ("bold",)))
        if session.batch.dry_run:
            self.write_line("dry run: every write was rolled back; nothing counts as ingested")

    def _short_summary(self) -> None:
        """pytest's "short test summary info": a line per failure (``-r``) group.

        ``--tb=no`` always shows it (the only place the failures are then named).
        """
        wanted = set(self.report_chars)
        if self.tb == "no":
            wanted |= {"failed", "error"}
        groups = [g for g in self.groups.values() if g.first and g.first.status in wanted]
        if "skipped" in wanted:
            groups += list(self.skips.values())
        if not groups:
            return
        self.section("short summary")
        for group in sorted(groups, key=lambda g: -g.count):
            plural = "s" if group.count != 1 else ""
            status = group.first.status if group.first else "failed"
            what = group.error_type if status != "skipped" else group.shape
            self.write_parts(
                (status.upper(), (STATUS_COLORS.get(status, "red"),)),
                (
                    f" {group.processor}: {what} "
                    f"({group.count} item{plural}), first key {group.keys[0]!r}",
                    (),
                ),
            )

    def _show_group(self, group: FailureGroup) -> None:
        first = group.first
        assert first is not None
        plural = "s" if group.count != 1 else ""
        title = f"{group.processor}: {group.error_type} ({group.count} item{plural})"
        self.section(title, "_")
        more = f" (+{group.count - len(group.keys)} more)" if group.count > len(group.keys) else ""
        self.write_line(f"keys: {', '.join(group.keys)}{more}")
        message = (first.error_message or "").rstrip()
        if self.tb == "line":
            self.write_line(
                f"{first.location or first.nodeid}: {message.splitlines()[0] if message else ''}"
            )
            return
        tb = (first.traceback or "").rstrip()
        if tb and self.tb == "short":
            lines = tb.splitlines()
            tb = "\n".join(lines[-6:]) if len(lines) > 6 else tb
        if tb:
            self.write_line(tb)
        else:
            self.write_line(f"{first.error_type}: {message}")
        if first.location and first.location not in (tb or "") + message:
            self.write_line(f"record: {first.location}")
        if first.log and self.tb in ("long", "short"):
            self.write_line("captured log:", "gray")
            for line in first.log.splitlines():
                self.write_line(f"  {line}")

    def _final_line(self, session: Session) -> None:
        elapsed = time.time() - session.started
        counts = session.counts
        total = sum(counts[s] for s in COUNTED)
        parts = [f"{counts[s]:,} {s}" for s in COUNTED if counts[s]] or ["no items"]
        rate = _rate(total, elapsed).replace("/s", " items/s")
        if counts["failed"] or counts["error"]:
            color = "red"
        elif session.shouldstop or session.fatal:
            color = "yellow"
        else:
            color = "green"
        self.section(f"{', '.join(parts)} in {elapsed:.2f}s ({rate})", "=", color, "bold")

    def rerun_command(self) -> str:
        return rerun_command(self.config)


def rerun_command(config: Config) -> str:
    """The command that reruns this batch's failures (``ingestkit --lf`` and its selection)."""
    option = config.option
    words = ["ingestkit", "--lf"]
    if option.dsn:
        words += ["--dsn", config.mask(option.dsn)]
    if option.keyword:
        words += ["-k", option.keyword]
    words += [a.split("::", 1)[0] for a in config.args]
    return " ".join(shlex.quote(w) for w in dict.fromkeys(words))


def show_collected(session: Session) -> None:
    out = TerminalReporter(session.config)
    for report in session.collect_errors:
        out.write_line(f"ERROR collecting {report.nodeid}: {report.message}")
    for proc in session.processors:
        if proc.source is None:
            described = "no source: runs once per batch"
        else:
            described = f"source: {proc.source.src!r}"
        out.write_line(f"{proc.nodeid}  ({described})")
    n = len(session.processors)
    out.write_line(f"{n} processor{'s' if n != 1 else ''} collected")


def show_fixtures(session: Session) -> int:
    """Every fixture the collected paths define or see, as pytest's ``--fixtures``.

    That includes fixtures of files and conftest.py files without processors;
    names starting with ``_`` only with ``-v``.
    """
    out = TerminalReporter(session.config)
    verbose = out.verbosity > 0
    seen: dict[int, Any] = {}
    for defs in session.fixturemanager.visible_anywhere().values():
        for fdef in defs:
            if verbose or not fdef.name.startswith("_"):
                seen.setdefault(id(fdef), fdef)
    for fdef in sorted(seen.values(), key=lambda d: (d.baseid, d.name)):
        scope = f" [{fdef.scope} scope]" if fdef.scope != "item" else ""
        autouse = " (autouse)" if fdef.autouse else ""
        out.write_line(f"{fdef.name}{scope}{autouse} -- {fdef.location}")
        out.write_line(f"    {fdef.doc or 'no docstring available'}")
    line = FixtureRequest.__init__.__code__.co_firstlineno
    out.write_line(f"request -- ingestkit/fixtures.py:{line}")
    out.write_line(
        "    who is asking: .fixturename, .nodeid, .scope, .config, .addfinalizer, .getfixturevalue"
    )
    for report in session.collect_errors:
        out.write_line(f"ERROR collecting {report.nodeid}: {report.message}")
    return 0 if not session.collect_errors else 1


# -- the plugin --------------------------------------------------------------


@hookimpl
def ingestkit_addoption(parser: Parser) -> None:
    group = parser.getgroup("reporting")
    group.addoption(
        "--color",
        choices=("yes", "no", "auto"),
        default="auto",
        help="colour the output (auto: on a terminal, unless NO_COLOR is set)",
    )
    group.addoption(
        "-r",
        dest="reportchars",
        default="fE",
        metavar="CHARS",
        help="short summary of (f)ailed, (E)rror, (s)kipped, (a)ll, (N)one groups (default: fE)",
    )
    group.addoption(
        "--durations",
        type=int,
        default=None,
        metavar="N",
        help="show the N slowest items",
    )


@hookimpl
def ingestkit_configure(config: Config) -> None:
    config.pluginmanager.register(TerminalPlugin(config), "terminalreporter")


class TerminalPlugin:
    def __init__(self, config: Config) -> None:
        self.reporter = TerminalReporter(config)

    @hookimpl
    def ingestkit_collectreport(self, report: CollectReport) -> None:
        pass  # shown in the summary, with the others

    @hookimpl
    def ingestkit_batch_start(self, session: Session) -> None:
        self.reporter.header(session)

    @hookimpl
    def ingestkit_processor_start(self, processor: Processor) -> None:
        self.reporter.processor_start(processor)

    @hookimpl
    def ingestkit_chunk_finish(self, chunk: Chunk) -> None:
        self.reporter.chunk_finish(chunk)

    @hookimpl
    def ingestkit_processor_finish(self, processor: Processor) -> None:
        self.reporter.processor_finish(processor)

    @hookimpl(trylast=True)
    def ingestkit_batch_finish(self, session: Session, exitstatus: int) -> None:
        if session.txn is None:
            if exitstatus == 5:
                self.reporter.write_line("no processors collected")
            return
        self.reporter.summary(session, exitstatus)
