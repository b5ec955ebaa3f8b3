"""The terminal reporter (plugin ``terminal``): header, progress, summary."""

from __future__ import annotations

import contextlib
import os
import shlex
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
    from .collection import CollectReport, Processor
    from .config import Config
    from .runner import Chunk
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Plain (non-terminal) progress prints at most one line per processor this often.
PLAIN_PROGRESS_SECONDS = 10.0
GROUP_SAMPLE_KEYS = 5


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
        self._line_open = False

    @property
    def file(self) -> TextIO:
        return self._file or sys.stdout

    def write_line(self, line: str = "") -> None:
        text = printable(self.config.mask(line)) + "\n"
        if self._line_open:  # replace the progress line
            text = "\r\x1b[K" + text
            self._line_open = False
        self._write(text)

    def write_status(self, line: str) -> None:
        """A progress line that the next one overwrites (on a terminal)."""
        self._write("\r" + printable(line[:200]) + "\x1b[K")
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

    def section(self, title: str, sep: str = "=") -> None:
        width = 80
        text = f" {title} "
        side = max(3, (width - len(text)) // 2)
        self.write_line(f"{sep * side}{text}{sep * side}")

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
                " (from the .ingestkit/ folder there, left by an earlier run;"
                " no config file found)"
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
        self.total = len(src) if isinstance(src, Sized) and not isinstance(src, str) else None
        self.proc_counts = {}
        self.proc_failed = 0
        self.proc_started = self.last_plain = time.perf_counter()

    def chunk_finish(self, chunk: Chunk) -> None:
        for report in chunk.reports:
            self.proc_counts[report.status] = self.proc_counts.get(report.status, 0) + 1
            if report.failed:
                self.proc_failed += 1
                self._group(report)
        if chunk.unchanged:
            self.proc_counts["unchanged"] = self.proc_counts.get("unchanged", 0) + chunk.unchanged
        if self.verbosity > 0:
            for report in chunk.reports:
                self.write_line(f"{report.nodeid} {report.status.upper()}")
            return
        if self.verbosity < 0:
            return
        now = time.perf_counter()
        if self.isatty:
            self.write_status(self._progress(now))
        elif now - self.last_plain >= PLAIN_PROGRESS_SECONDS:
            self.last_plain = now
            self.write_line(self._progress(now))

    def _progress(self, now: float) -> str:
        done = sum(self.proc_counts.values())
        nodeid = self.current.nodeid if self.current else ""
        if self.total:
            share = min(done / self.total, 1.0)
            bar = f" [{'#' * int(share * 20):<20}] {share:4.0%}" if self.isatty else ""
            parts = [f"{nodeid}{bar} {done:,}/{self.total:,}"]
        else:
            parts = [f"{nodeid} {done:,} items"]
        parts.append(_rate(done, now - self.proc_started))
        if self.proc_failed:
            parts.append(f"{self.proc_failed:,} failed")
        return " · ".join(parts)

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
            self.section("FAILURES")
            for group in sorted(self.groups.values(), key=lambda g: -g.count):
                self._show_group(group)
        elif self.groups:  # --tb=no: as pytest, a short summary line per failure group
            self.section("short summary")
            for group in sorted(self.groups.values(), key=lambda g: -g.count):
                plural = "s" if group.count != 1 else ""
                status = group.first.status.upper() if group.first else "FAILED"
                self.write_line(
                    f"{status} {group.processor}: {group.error_type} "
                    f"({group.count} item{plural}), first key {group.keys[0]!r}"
                )
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
        if session.counts["failed"] or session.counts["error"]:
            self.write_line(f"rerun the failures: {self.rerun_command()}")
        if session.batch.dry_run:
            self.write_line("dry run: every write was rolled back; nothing counts as ingested")

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

    def _final_line(self, session: Session) -> None:
        elapsed = time.time() - session.started
        counts = session.counts
        total = sum(counts[s] for s in COUNTED)
        parts = [f"{counts[s]:,} {s}" for s in COUNTED if counts[s]] or ["no items"]
        rate = _rate(total, elapsed).replace("/s", " items/s")
        self.section(f"{', '.join(parts)} in {elapsed:.2f}s ({rate})")

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
