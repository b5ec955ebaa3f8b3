"""The session (plugin ``session``): core options, the Session, exit codes, the batch."""

from __future__ import annotations

import argparse
import contextlib
import enum
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pluggy
import psycopg2

from . import __version__
from .capture import LogCapture
from .collection import Collector, CollectReport, Processor, collect
from .config import Config
from .database import (
    Database,
    check_temp,
    connect,
    dsn_secrets,
    mask_dsn,
    resolve_dsn,
    resource_problem,
)
from .fixtures import FixtureManager, FixtureRuntime
from .lookup import Lookup
from .outcomes import ItemTimeout
from .queries import q
from .schema import ensure_schema
from .stash import StashKey
from .transaction import BatchAborted, ConnectionLost, Transaction

if TYPE_CHECKING:
    from .chunks import Chunk

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Set by a plugin that left nothing to run on purpose (``--lf`` with no failures):
#: the run prints this and exits 0 without a batch.
NOTHING_TO_RUN = StashKey[str]()
#: Seconds a thread may hold the GIL while another waits for it (see run_batch).
COMMIT_SWITCH_INTERVAL = 0.0005


class ExitCode(enum.IntEnum):
    """Exit codes, as pytest's (2 also when -x/--maxfail stopped the batch early)."""

    OK = 0
    ITEMS_FAILED = 1
    INTERRUPTED = 2
    INTERNAL_ERROR = 3
    USAGE_ERROR = 4
    NO_PROCESSORS_COLLECTED = 5


@dataclass
class Batch:
    """The ``batch`` fixture."""

    id: uuid.UUID
    dry_run: bool = False
    started_at: datetime | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    lock_key: int | None = None


@hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file_or_dir", nargs="*", help="paths or node ids (path::process_x[KEY])")
    parser.add_argument("-V", "--version", action="version", version=f"ingestkit {__version__}")
    add = parser.add_argument
    add("--dsn", help="target database (else INGESTKIT_DSN, DATABASE_URL, dsn in config, embedded)")
    add("-k", dest="keyword", metavar="EXPR", help="only processors matching the expression")
    add(
        "-x",
        "--exitfirst",
        dest="maxfail",
        action="store_const",
        const=1,
        help="stop after the first failure",
    )
    add("--maxfail", type=int, metavar="N", default=0, help="stop after N failures")
    add("--reprocess", action="store_true", help="ignore 'already ingested'")
    add("--dry-run", action="store_true", help="run everything, then roll every write back")
    add(
        "--collect-only", action="store_true", help="list processors and their sources, run nothing"
    )
    add("--fixtures", action="store_true", help="list the fixtures visible in the given paths")
    add("-v", "--verbose", action="count", default=0, help="one line per item")
    add("-q", "--quiet", action="count", default=0, help="only the summary")
    add("--tb", choices=("long", "short", "line", "no"), default="short", help="traceback style")
    add(
        "-p",
        dest="plugins",
        action="append",
        default=[],
        metavar="NAME",
        help="load (or no:NAME block) a plugin",
    )
    add(
        "--store-payloads",
        choices=("latest", "all", "failed"),
        default=None,
        help="records kept: each key's latest (default), all items', or failed ones'",
    )
    add(
        "--chunk-size",
        type=int,
        default=0,
        metavar="N",
        help="items per transaction (default adapts)",
    )
    add(
        "--item-timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="fail an item that runs longer than this (its SQL statements too)",
    )


class Session:
    """One invocation: what was collected, the database, the counts."""

    def __init__(self, config: Config) -> None:
        self.config = config
        config.session = self
        self.fixturemanager = FixtureManager(config)
        self.fixtures = FixtureRuntime(self.fixturemanager)
        self.collector = Collector(self)
        self.processors: list[Processor] = []
        self.collect_errors: list[CollectReport] = []
        self.teardown_errors: list[tuple[str, BaseException, str]] = []
        self.counts: Counter[str] = Counter()
        self.shouldstop: str | bool = False
        self.interrupted = False
        self.fatal: str | None = None
        self.batch = Batch(uuid.uuid4(), dry_run=bool(config.option.dry_run))
        if self.batch.dry_run:
            self.batch.meta["dry_run"] = True
        self.database: tuple[str, str] | None = None  # (masked dsn, origin)
        self.dsn: str | None = None
        self.txn: Transaction | None = None
        self.control: Any = None
        self.db: Database | None = None
        self.lookup: Lookup | None = None
        self.capture = LogCapture(config.getoption("log_level") or config.inicfg.get("log_level"))
        self.interrupted_batches: list[str] = []
        self.notes: list[str] = []  # shown in the header
        self.warnings: list[str] = []  # shown in the summary
        self.finished_with: int | None = None  # the exit code the batch row was finished with
        self.timing_item = False  # --item-timeout's alarm is armed
        self.started = time.time()
        for name in ("builtin",):
            plugin = config.pluginmanager.get_plugin(name)
            self.fixturemanager.parse(plugin, "")
        for name, plugin in config.pluginmanager.list_name_plugin():
            if name not in ("builtin",) and plugin is not None and hasattr(plugin, "__dict__"):
                self.fixturemanager.parse(plugin, "")

    @property
    def role(self) -> str:
        """``"single"``; under ``-n``, ``"leader"`` or ``"worker"``: the mode's plugin registered.

        For plugins whose effect must happen once per batch (see docs/plugins.md).
        """
        pm = self.config.pluginmanager
        if pm.has_plugin("worker"):
            return "worker"
        return "leader" if pm.has_plugin("leader") else "single"

    def perform_collect(self) -> None:
        self.processors, self.collect_errors = collect(self)
        self.config.hook.ingestkit_collection_modifyitems(
            session=self, config=self.config, processors=self.processors
        )
        self.config.hook.ingestkit_collection_finish(session=self)

    def open_database(self) -> None:
        dsn, origin = resolve_dsn(self.config)
        self.config.secrets.extend(dsn_secrets(dsn))
        self.database = (mask_dsn(dsn), origin)
        self.dsn = dsn  # for worker processes; never shown
        conn = connect(dsn)
        control = connect(dsn, "ingestkit-control")
        control.autocommit = True
        stay_connected(conn)
        stay_connected(control)
        ensure_schema(conn)
        check_temp(conn)
        self.control = control
        self.txn = Transaction(conn, dry_run=self.batch.dry_run)
        timeout = self.config.getoption("item_timeout")
        if timeout:  # an item stuck in one SQL statement is bounded by the server
            self.txn.bound_statements(timeout)
        self.db = Database(self.txn)
        self.lookup = Lookup(self.txn)

    def live_control(self) -> Any:
        """The control connection, opened again if it was lost (it holds no lock)."""
        if self.control.closed:
            assert self.dsn is not None, "the database was opened"
            self.control = connect(self.dsn, "ingestkit-control")
            self.control.autocommit = True
            stay_connected(self.control)
        return self.control

    def close_database(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection
            if self.txn is not None:
                self.txn.close()  # waits for a background commit; a dry run ends here
        with contextlib.suppress(Exception):
            if self.control is not None and not self.control.closed:
                self.control.close()

    def on_alarm(self, signum: int, frame: Any) -> None:
        """SIGALRM: the running item exceeded --item-timeout."""
        if not self.timing_item or self.txn is None:
            return  # went off just as the item ended
        seconds = self.config.option.item_timeout
        self.txn.interrupt(ItemTimeout(f"the item ran longer than {seconds:g} s (--item-timeout)"))

    def count(self, chunk: Chunk) -> None:
        for report in chunk.reports:
            self.counts[report.status] += 1
        self.counts["unchanged"] += chunk.unchanged

    @property
    def exitstatus(self) -> ExitCode:
        if self.shouldstop or self.interrupted or self.fatal:
            return ExitCode.INTERRUPTED
        from .lastfailed import NOT_FOUND

        if self.config.stash.get(NOT_FOUND, None):  # a node id's key matched no record
            return ExitCode.USAGE_ERROR
        if (
            self.counts["failed"]
            or self.counts["error"]
            or self.collect_errors
            or self.teardown_errors
        ):
            return ExitCode.ITEMS_FAILED
        if not self.processors:
            return ExitCode.NO_PROCESSORS_COLLECTED
        return ExitCode.OK


def stay_connected(conn: Any) -> None:
    """Keep a batch connection open through a server's idle timeouts."""
    with conn.cursor() as cur:
        cur.execute(q("stay-connected"))
        if conn.server_version >= 140000:
            cur.execute(q("stay-connected-14"))
    if not conn.autocommit:
        conn.commit()


@hookimpl(trylast=True)
def ingestkit_cmdline_main(config: Config) -> int:
    config.ensure_cache_dir()  # marks the rootdir for later runs, like .pytest_cache
    session = Session(config)
    try:
        if config.option.fixtures:
            from .terminal import show_fixtures

            session.perform_collect()
            return show_fixtures(session)
        if not config.option.collect_only:
            session.open_database()
        session.perform_collect()
        if config.option.collect_only:
            from .terminal import show_collected

            show_collected(session)
            if session.collect_errors:
                return ExitCode.ITEMS_FAILED
            return ExitCode.OK if session.processors else ExitCode.NO_PROCESSORS_COLLECTED
        nothing = config.stash.get(NOTHING_TO_RUN, None)
        if nothing is not None:
            for note in session.notes:
                print(note)
            print(nothing)
            return ExitCode.OK
        if not session.processors and not session.collect_errors:
            print("no processors collected")
            return ExitCode.NO_PROCESSORS_COLLECTED
        return run_batch(session)
    finally:
        session.close_database()
        session.collector.cleanup()


def run_batch(session: Session) -> int:
    config = session.config
    txn = session.txn
    assert txn is not None, "run_batch needs the database open"
    status: int = ExitCode.INTERNAL_ERROR
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, txn.on_sigint) if in_main else None
    timeout = config.option.item_timeout
    if timeout and in_main:
        signal.signal(signal.SIGALRM, session.on_alarm)
    # The commit thread mostly waits on the server; when an answer comes it must
    # get the GIL back from the processors' thread. Python's default (5 ms) leaves
    # the server idle that long, several times a chunk.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(COMMIT_SWITCH_INTERVAL)
    try:
        config.hook.ingestkit_batch_start(session=session)
        with session.capture:
            try:
                config.hook.ingestkit_runtestloop(session=session)
            except KeyboardInterrupt:
                session.interrupted = True
                session.shouldstop = "interrupted by Ctrl-C (KeyboardInterrupt)"
                txn.rollback()
            except ConnectionLost as exc:
                session.fatal = f"lost the database connection: {exc}"
            except BatchAborted as exc:
                session.fatal = str(exc)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                problem = resource_problem(exc)
                if problem is not None:  # e.g. disk full: the chunk in flight is undone
                    session.fatal = problem
                    with contextlib.suppress(Exception):
                        txn.rollback()
                elif not txn.conn.closed and not session.control.closed:
                    raise
                else:
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    session.fatal = f"lost the database connection: {first}"
        status = session.exitstatus
    finally:
        sys.setswitchinterval(switch_interval)
        if in_main:
            signal.signal(signal.SIGINT, previous)
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
        # also after an internal error (status 3): the batch row is finished, not left running
        session.finished_with = status
        try:
            config.hook.ingestkit_batch_finish(session=session, exitstatus=status)
        except Exception as exc:
            # out of disk, the batch row stays 'running': the next run marks it interrupted
            if status != ExitCode.INTERNAL_ERROR and not (session.fatal and resource_problem(exc)):
                raise
    return status


def record_exit_code(config: Config, code: int) -> None:
    """Make ``ingestkit.batches.exit_code`` the process's exit code ``code``.

    The batch row is finished with the batch's status; an error after that
    (a plugin's ``batch_finish``, closing) changes what the process exits with.
    """
    session: Session | None = getattr(config, "session", None)
    if session is None or session.finished_with is None or session.finished_with == code:
        return
    if not config.pluginmanager.has_plugin("batches"):
        return  # a worker: its leader keeps the batch's row
    if session.dsn is None or session.batch.lock_key is None:
        return  # no batch row was made
    with contextlib.suppress(Exception):  # best effort: the server may be gone
        conn = connect(session.dsn, "ingestkit-control")
        try:
            with conn.cursor() as cur:
                cur.execute(q("set-batch-exit-code"), {"id": session.batch.id, "exit_code": code})
            conn.commit()
        finally:
            conn.close()
