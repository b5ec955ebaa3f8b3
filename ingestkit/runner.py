"""The in-process runner (plugin ``runner``): processors, chunks, the per-item protocol.

For each processor: set up its fixtures wider than ``item`` (their writes
commit before the first item), then read its entries a chunk at a time and
hand each chunk to ``ingestkit_chunk_run`` (:mod:`ingestkit.chunks`). This
plugin's implementation, the in-process one, asks the recorder what is
already ingested, runs each item under the transaction rules of
:mod:`ingestkit.transaction`, and commits the chunk together with its
outcome rows. The leader of ``-n`` (:mod:`ingestkit.leader`) queues the chunk
instead; a worker (:mod:`ingestkit.worker`) runs the chunks it claims with
:meth:`Runner.run_chunk`.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from . import sources
from .chunks import Chunk, Claim
from .fixtures import Closure, FixtureRequest, argnames_of
from .keyset import KeySet
from .outcomes import ItemTimeout, RecordError, Skipped, TeardownErrors
from .readers import SourceUnreadable
from .recorder import store_payloads
from .reports import ItemReport
from .sources import (
    Entry,
    Reader,
    content_hash,
    iter_entries,
    make_keyfunc,
    to_json,
    to_payload,
)
from .stash import StashKey
from .transaction import ConnectionLost, ReplayChunk, Transaction, TransactionEnded
from .typed import ModelError, RecordInvalid, model_for

if TYPE_CHECKING:
    from .collection import Processor
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

_PACKAGE_DIR = str(Path(__file__).parent)
#: Adaptive chunking: start small (slow processors commit early), grow while fast.
FIRST_CHUNK, MAX_CHUNK, CHUNK_SECONDS = 16, 5000, 0.5
#: About how many bytes of records a chunk holds at most: memory stays flat with
#: 100 KB records as with 100-byte ones.
CHUNK_BYTES = 8 << 20
_PER_ITEM_HOOKS = (
    "ingestkit_runtest_setup",
    "ingestkit_runtest_call",
    "ingestkit_runtest_teardown",
    "ingestkit_runtest_makereport",
    "ingestkit_runtest_logreport",
)


class Item:
    """The ``item`` fixture: one record of one processor, as it runs."""

    __slots__ = (
        "key",
        "nodeid",
        "attempt",
        "previous_error",
        "record",
        "processor",
        "location",
        "content_hash",
        "rerun",
        "duplicate",
        "first",
        "entry_error",
        "has_statements",
        "statement_error",
        "uses_raw",
        "ended_transaction",
        "report",
        "value",
        "record_kept",
    )

    def __init__(self, processor: Processor, record: Any, location: str) -> None:
        self.processor = processor
        self.record = record
        self.location = location
        self.key = ""
        self.nodeid = ""
        self.attempt = 1
        self.previous_error: str | None = None
        self.content_hash: str | None = None
        self.rerun = False
        self.duplicate = False  # its key came earlier in this batch
        #: where that was and that record's content hash, when known
        self.first: tuple[str | None, str] | None = None
        self.entry_error: str | None = None
        self.has_statements = False
        self.statement_error: BaseException | None = None
        self.uses_raw = False  # it took db.connection (see Transaction.lost_by)
        self.ended_transaction = False  # its own COMMIT or ROLLBACK ended the chunk's
        self.report: ItemReport | None = None
        self.value: Any = record  # what the processor's ``record`` gets (a typed record)
        self.record_kept = False  # ingestkit.latest holds this very record already

    def __repr__(self) -> str:
        return f"<Item {self.nodeid}>"


@dataclass
class Plan:
    """How one processor's items are called, worked out once when it starts."""

    processor: Processor
    closure: Closure
    setup_error: BaseException | None = None
    # the fast path: every argument is a wider fixture (already set up) or a
    # per-item built-in; None when some item-scoped fixture must be set up
    static: dict[str, Any] | None = None
    per_item: list[tuple[str, str]] = field(default_factory=list)  # (argument, built-in)
    keyfunc: Any = None  # record, position -> key
    model: Any = None  # the typed record model of ``record: Model`` (see typed.py)


def _record_bytes(batch: list[Entry]) -> int:
    """About how large the chunk's records are, each, from a few of them."""
    sample = batch[:: max(1, len(batch) // 4)][:4]
    total = 0
    for entry in sample:
        record = entry.record
        if type(record) is dict:
            total += sum(len(v) if type(v) is str else 16 for v in record.values())
        elif record is not None:
            try:
                total += len(to_json(record))
            except Exception:  # the item itself will say what is wrong with it
                total += 256
    return total // len(sample) + 64


#: Formatted frames by where an exception went through (failures repeat: a bad
#: row fails in the same line as the one before it).
_FRAMES: dict[tuple[tuple[Any, int], ...], str] = {}


def _trim_traceback(exc: BaseException) -> str:
    """The traceback from the user's code on; ingestkit's own frames are left out.

    The frames of a path taken before are formatted once (reading source lines
    is most of the cost); the stored traceback is the same, complete, each time.
    """
    path = []
    tb = exc.__traceback__
    while tb is not None:
        path.append((tb.tb_frame.f_code, tb.tb_lineno))
        tb = tb.tb_next
    key = tuple(path)
    frames = _FRAMES.get(key)
    if frames is None:
        kept = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if not f.filename.startswith(_PACKAGE_DIR)
        ]
        frames = (
            "".join(["Traceback (most recent call last):\n", *traceback.format_list(kept)])
            if kept
            else ""
        )
        if len(_FRAMES) > 1000:
            _FRAMES.clear()
        _FRAMES[key] = frames
    return frames + _exception_line(exc)


def _exception_line(exc: BaseException) -> str:
    """``traceback.format_exception_only(exc)``, without building a TracebackException
    in the usual case (no notes, not a SyntaxError): the same text."""
    kind = type(exc)
    if getattr(exc, "__notes__", None) is not None or issubclass(kind, SyntaxError):
        return "".join(traceback.format_exception_only(kind, exc))
    name, module = kind.__qualname__, kind.__module__
    if module not in ("__main__", "builtins"):
        name = f"{module}.{name}" if isinstance(module, str) else f"<unknown>.{name}"
    try:
        text = str(exc)
    except Exception:
        return "".join(traceback.format_exception_only(kind, exc))
    return f"{name}: {text}\n" if text else f"{name}\n"


def _message(exc: BaseException) -> str:
    named = getattr(exc, "ingestkit_message", None)  # a COPY error naming its column
    if named:
        return str(named)
    text = str(exc).strip()
    if "CONTEXT:  COPY " in text:  # "line 1" of ingestkit's own COPY, not of the user's file
        text = "\n".join(
            line for line in text.splitlines() if not line.startswith("CONTEXT:  COPY ")
        )
    return text or type(exc).__name__


def _convert(item: Item, model: Any) -> bool:
    """Give the item its typed record; on failure ``item.value`` is the RecordInvalid."""
    try:
        item.value = model.convert(item.record, item.location)
    except RecordInvalid as exc:
        item.value = exc
        return False
    return True


#: How many keys' first records the duplicate-key message can name (bounded memory).
FIRSTS_KEPT = 100_000

#: The (processor, key) pairs of node ids with a key that a record matched.
MATCHED_KEYS = StashKey[set[tuple[str, str]]]()


def _duplicate_message(item: Item) -> str:
    """Whether a duplicate's content differs from the first record's, and where that was."""
    message = f"duplicate key {item.key!r} in this batch ({item.location}); "
    first = item.first
    if first is None:
        return message + "the first record with this key was already processed"
    same = "the same content as" if first[0] == item.content_hash else "content that differs from"
    return message + f"it has {same} the first record with this key ({first[1]}), already processed"

def _item_key(item: Item, processor: Processor, entry: Entry, position: int, keyfunc: Any) -> str:
    """The item's key: stored, from ``key=``, or ``#position`` when it cannot be read."""
    if processor.source is None and entry.key is None:
        return ""
    if entry.key is not None:
        return entry.key
    if entry.error is not None:
        key = _bad_entry_key(entry, position, keyfunc)
        if _undecodable(entry.record):  # no payload: --lf cannot replay what was not read
            item.record = None
    else:
        try:
            key = keyfunc(entry.record, position)
        except RecordError as exc:
            key = f"#{position}"
            item.entry_error = f"{entry.location}: {exc}"
        except Exception as exc:
            key = f"#{position}"
            item.entry_error = f"{entry.location}: key= raised {type(exc).__name__}: {exc}"
    # a key from a source's record, not one already stored
    return sources.storable_key(key)


def _bad_entry_key(entry: Entry, position: int, keyfunc: Any) -> str:
    """A record that was read but is bad (e.g. too many fields) keeps its key if it can."""
    try:
        key: str = keyfunc(entry.record, position) if entry.record is not None else f"#{position}"
        if sources.storable_key(key) != key:  # its key could not be read either
            key = f"#{position}"
    except Exception:
        key = f"#{position}"
    return key


def _undecodable(record: Any) -> bool:
    """Whether a record a reader could not decode holds its bad bytes (or NULs)."""
    return isinstance(record, dict) and any(
        isinstance(v, str) and sources.storable_key(v) != v and not v.startswith("\\")
        for v in record.values()
    )


class Runner:
    """Runs a session's processors; one instance per batch."""

    def __init__(self, session: Session, setup_fixtures: bool = True) -> None:
        self.session = session
        #: whether processors' wider fixtures are set up here (not in a leader: its workers do)
        self.setup_fixtures = setup_fixtures
        #: the processor running now stopped on an exception (its source not read to its end)
        self.broken_off = False
        self.config = session.config
        self.hook = session.config.hook
        if session.txn is None:
            raise RuntimeError("the runner needs the session's database open")
        self.txn: Transaction = session.txn
        self.runtime = session.fixtures
        self.capture = session.capture
        option = self.config.option
        self.maxfail = option.maxfail
        self.reprocess = option.reprocess
        # "latest" (the default) and "all" keep succeeded records (see recorder.store_all)
        self.store_all = store_payloads(self.config) != "failed"
        self.latest_only = store_payloads(self.config) == "latest"
        self.matched_keys: set[tuple[str, str]] = session.config.stash.setdefault(
            MATCHED_KEYS, set()
        )
        self.fixed_chunk = option.chunk_size
        self.item_timeout = option.item_timeout
        self.chunk_size = option.chunk_size or FIRST_CHUNK
        pm = self.config.pluginmanager
        # a per-item hook is called only when a plugin other than this one implements it
        self.active = {
            name: any(
                impl.function is not _DEFAULTS.get(name)
                for impl in getattr(pm.hook, name).get_hookimpls()
            )
            for name in _PER_ITEM_HOOKS
        }
        manager = session.fixturemanager
        self.seeded = {name: manager.defs_for(name, "")[0] for name in ("record", "item", "log")}
        self.log_logger = self.capture.logger
        #: the hooks of the running processor: conftest.py files not above it left out
        self.ihook: Any = self.hook
        self._ihooks: dict[Path, Any] = {}
        self._module: str | None = None
        self.failures = 0

    # -- processors --------------------------------------------------------

    def run(self) -> None:
        try:
            for processor in self.session.processors:
                if self.session.shouldstop:
                    break
                self.run_processor(processor)
        finally:
            self.complete()
        self.teardown("module")
        self.teardown("batch")

    def run_processor(self, processor: Processor) -> None:
        """Run one processor's items: its entries read a chunk at a time."""
        session = self.session
        plan = self.start_processor(processor)
        try:
            if plan.model is not None and plan.setup_error is None and self._bad_header(plan):
                return
            entries = self.ihook.ingestkit_processor_entries(processor=processor, session=session)
            self.run_entries(plan, iter(entries or ()))
        except BaseException:
            self.broken_off = True
            raise
        finally:
            self.finish_processor(processor)

    def start_processor(self, processor: Processor) -> Plan:
        """Tear down the module before when it changes, announce the processor, plan it."""
        if self._module is not None and self._module != processor.module_nodeid:
            self.teardown("module")
        self._module = processor.module_nodeid
        self.broken_off = False
        self.runtime.processor = processor
        self.ihook = self.hook_for(processor)
        self.ihook.ingestkit_processor_start(processor=processor, session=self.session)
        return self.prepare(processor, setup=self.setup_fixtures)

    def hook_for(self, processor: Processor) -> Any:
        """The hooks for ``processor``: those of conftest.py files not above it left out,
        as pytest's ``session.gethookproxy(fspath)``."""
        ihook = self._ihooks.get(processor.path)
        if ihook is None:
            ihook = self._ihooks[processor.path] = _CachedHooks(
                self.session.collector.hook_for(processor.path)
            )
        return ihook

    def prepare(self, processor: Processor, setup: bool = True) -> Plan:
        """How the processor's items are called; with ``setup``, its wider fixtures set up."""
        closure = self.session.fixturemanager.closure(processor.nodeid, argnames_of(processor.func))
        plan = Plan(processor, closure, closure.error)
        if plan.setup_error is None and setup:
            plan.setup_error = self._setup_wider(closure, processor)
        if plan.setup_error is None and setup:
            self._plan_fast_path(plan)
        try:
            plan.keyfunc = make_keyfunc(processor.source.key if processor.source else None)
        except TypeError as exc:  # a bad key= fails this processor's items, not the batch
            plan.setup_error = plan.setup_error or exc
            plan.keyfunc = make_keyfunc(None)
        if processor.source is not None:
            try:
                plan.model = model_for(processor.func)
            except ModelError as exc:  # e.g. a pydantic model without pydantic
                plan.setup_error = plan.setup_error or exc
        return plan

    def _bad_header(self, plan: Plan) -> bool:
        """A typed processor's CSV lacks required columns: one error item, no records."""
        spec = plan.processor.source
        if spec is None:
            return False
        header = getattr(spec.src, "read_header", None)
        if header is None:
            return False
        try:
            columns = header(spec.declared_in)
            if columns is not None:
                plan.model.check_header(columns, str(spec.src.resolve(spec.declared_in)))
        except RecordInvalid as exc:
            self._source_error(plan.processor, exc)
            return True
        except Exception:  # unreadable: the reader itself says so when it runs
            return False
        return False

    def finish_processor(self, processor: Processor) -> None:
        """Report the processor's last chunks, tear down its fixtures, announce its end."""
        try:
            self.complete()
        finally:
            self.teardown("processor")
            self.runtime.processor = None
            self.hook_for(processor).ingestkit_processor_finish(
                processor=processor, session=self.session
            )

    def _setup_wider(self, closure: Closure, processor: Processor) -> BaseException | None:
        """Set up fixtures wider than item now, and commit what they wrote."""
        wider = closure.wider_than_item()
        if not wider:
            return None
        request = FixtureRequest(self.runtime, processor.nodeid, "processor", None, processor)
        try:
            for fdef in wider:
                self.runtime.value(closure, fdef, request)
                self.txn.commit()  # each one's writes stay, whatever the next one does
        except ConnectionLost:
            raise
        except Exception as exc:
            self.txn.rollback()
            return exc
        return None

    def _plan_fast_path(self, plan: Plan) -> None:
        """Arguments that need no per-item fixture setup are filled in directly."""
        closure = plan.closure
        if any(fdef.scope == "item" for fdef in closure.autouse):
            return
        static: dict[str, Any] = {}
        per_item: list[tuple[str, str]] = []
        builtins = {fdef: name for name, fdef in self.seeded.items()}
        for name, fdef in closure.args:
            if fdef is None:  # request
                return
            if fdef.scope != "item":
                static[name] = self.runtime.cache[fdef.scope][fdef][0]
            elif fdef in builtins:
                per_item.append((name, builtins[fdef]))
            else:
                return
        plan.static, plan.per_item = static, per_item

    def teardown(self, scope: str) -> None:
        """Tear down the fixtures of ``scope``; their errors go to the summary."""
        errors = self.runtime.teardown(scope)
        if errors:
            self.txn.rollback()  # a teardown's own writes are not an item's
        for exc in errors:
            self.session.teardown_errors.append((scope, exc, _trim_traceback(exc)))

    # -- entries and chunks ------------------------------------------------

    def run_entries(self, plan: Plan, entries: Iterator[Entry]) -> None:
        """Read ``entries`` a chunk at a time: key them, de-duplicate them, run the chunks."""
        processor = plan.processor
        keyfunc = plan.keyfunc
        seen = KeySet(spill=self.session.control)
        self.firsts: dict[str, tuple[str | None, str]] = {}
        self.rerun_keys: set[str] = set()
        position = 0
        record_bytes = 0  # an estimate, from the chunk before
        broken: Exception | None = None
        while not self.session.shouldstop and broken is None:
            batch: list[Entry] = []
            size = self.chunk_size
            if record_bytes and not self.fixed_chunk:  # large records: fewer per chunk
                size = max(1, min(size, CHUNK_BYTES // record_bytes))
            try:
                for entry in itertools.islice(entries, size):
                    batch.append(entry)
            except ConnectionLost:
                raise
            except Exception as exc:  # the source itself broke: run what it gave, then say so
                broken = exc
            if not batch:
                break
            record_bytes = _record_bytes(batch)
            items = []
            for entry in batch:
                position += 1
                item = self._make_item(processor, entry, position, keyfunc)
                if item is not None:
                    items.append(item)
            if processor.source is not None:
                for item, first in zip(items, seen.add_all([it.key for it in items]), strict=True):
                    if not first:
                        item.duplicate = True
                        item.first = self.firsts.get(item.key)  # for the duplicate-key message
                    elif len(self.firsts) < FIRSTS_KEPT:
                        self.firsts[item.key] = (item.content_hash, item.location)
            self.run_items(plan, items, len(batch))
        if broken is not None and not self.session.shouldstop:
            self._source_error(processor, broken)

    def run_items(self, plan: Plan, items: list[Item], read: int) -> None:
        """Hand a chunk of items read from the source (``read`` entries made them) on."""
        self.hook.ingestkit_chunk_run(runner=self, plan=plan, items=items, read=read)

    def adapt(self, seconds: float, count: int) -> None:
        """Grow the chunks while they are fast, shrink them when slow."""
        if self.fixed_chunk:
            return
        if seconds < CHUNK_SECONDS / 2 and count >= self.chunk_size:
            self.chunk_size = min(self.chunk_size * 2, MAX_CHUNK)
        elif seconds > CHUNK_SECONDS * 2:
            self.chunk_size = max(self.chunk_size // 2, 1)

    def _make_item(
        self, processor: Processor, entry: Entry, position: int, keyfunc: Any
    ) -> Item | None:
        item = Item(processor, entry.record, entry.location)
        item.attempt = entry.attempt
        item.previous_error = entry.previous_error
        key = _item_key(item, processor, entry, position, keyfunc)
        if not self._wanted(processor, entry, item, key):
            return None
        item.key = key
        item.nodeid = f"{processor.nodeid}[{key}]"
        if entry.error is not None:
            item.entry_error = entry.error
        if entry.record is not None or processor.source is not None:
            try:
                item.content_hash = entry.content_hash or content_hash(entry.record, entry.flat)
            except RecordError as exc:  # nested too deeply to hash, store or send to a worker
                item.entry_error = item.entry_error or f"{entry.location}: {exc}"
                item.record = None
        return item

    def _wanted(self, processor: Processor, entry: Entry, item: Item, key: str) -> bool:
        """Whether the item runs in this batch: selected (--lf, -k on keys), not run by --ff yet."""
        if processor.selected_keys is not None:
            if key not in processor.selected_keys:
                return False
            self.matched_keys.add((processor.nodeid, key))  # see lastfailed.not_found
        if entry.rerun:
            self.rerun_keys.add(key)
            item.rerun = True
        elif key in self.rerun_keys:
            return False  # --ff already ran this key first
        return True

    def _source_error(self, processor: Processor, exc: BaseException) -> None:
        chunk = Chunk(processor)
        item = Item(processor, None, processor.nodeid)
        item.key, item.nodeid = "", f"{processor.nodeid}[]"
        where = ""
        if processor.source is not None and isinstance(processor.source.src, Reader):
            where = f" ({processor.source.src.resolve(processor.source.declared_in)})"
        report = self._report(item, "error", exc, 0.0)
        if not isinstance(exc, (SourceUnreadable, RecordInvalid)):
            report.error_message = f"the source{where} could not be read: {_message(exc)}"
        chunk.reports.append(report)
        self.commit(chunk)

    def run_chunk(
        self, plan: Plan, items: list[Item], task: Any = None, claim: Claim | None = None
    ) -> None:
        """Run a chunk of items in this process and commit it with its outcomes.

        ``task`` is the queued task the items came from (a worker's), ``claim``
        the worker's hold on it.
        """
        processor = plan.processor
        chunk = Chunk(processor, task=task)
        self.txn.begin()
        to_run = self._triage(chunk, items)
        ran = self._run_each(to_run, plan, claim)
        chunk.left = to_run[len(ran) :]
        if claim is not None:
            claim.wait_turn()
        self._finish_chunk(chunk, ran, plan)

    def _triage(self, chunk: Chunk, items: list[Item]) -> list[Item]:
        """The items to run: duplicates fail, unchanged ones count, the rest get their history."""
        processor = chunk.processor
        # a re-fed (--lf) item carries its own history; the others need theirs
        keys = [it.key for it in items if processor.source is not None and not it.rerun]
        history = (
            self.ihook.ingestkit_chunk_history(session=self.session, processor=processor, keys=keys)
            if keys
            else None
        ) or {}
        to_run: list[Item] = []
        for item in items:
            if item.duplicate:
                chunk.reports.append(self._duplicate(item))
                continue
            past = history.get(item.key)
            if past is None or self._runs_again(chunk, item, past):
                to_run.append(item)
        return to_run

    def _runs_again(self, chunk: Chunk, item: Item, past: Any) -> bool:
        """Whether an item with a recorded outcome runs; it is unchanged otherwise."""
        same = past.succeeded_hash == item.content_hash and item.entry_error is None
        if same and not self.reprocess:
            chunk.unchanged += 1
            if past.status != "succeeded":  # content went back to what succeeded
                chunk.restored.append(item.key)
            return False
        item.record_kept = past.succeeded_hash == item.content_hash
        if past.status in ("failed", "error") and item.attempt == 1:
            item.attempt = past.attempt + 1
            item.previous_error = past.error_message
        return True

    def _duplicate(self, item: Item) -> ItemReport:
        report = self._report(item, "failed", None, 0.0)
        report.error_type = "DuplicateKey"
        report.error_message = _duplicate_message(item)
        report.location = item.location
        report.track = False
        return report

    def _run_each(self, to_run: list[Item], plan: Plan, claim: Claim | None) -> list[Item]:
        """Run the items until the batch stops; those that ran (Ctrl-C: without its item)."""
        session = self.session
        ran: list[Item] = []
        try:
            for item in to_run:
                if session.shouldstop:
                    break
                ran.append(item)
                self._run_item(item, plan)
                if self.txn.ended_by is not None:
                    self._run_again(ran, plan, claim)
                if item.report is not None and item.report.failed:
                    self.count_failure()
        except KeyboardInterrupt:
            item = ran.pop()
            self._abandon(item)
            session.shouldstop = "interrupted by Ctrl-C (KeyboardInterrupt)"
            session.interrupted = True
        return ran

    def _run_again(self, ran: list[Item], plan: Plan, claim: Claim | None) -> None:
        """An item ended the chunk's transaction: what its neighbours wrote went with
        it, so they run again in a new one; the item itself fails."""
        while (culprit := self.txn.ended_by) is not None:
            self.txn.ended_by = None
            culprit.ended_transaction = True
            if culprit.report is None or culprit.report.status != "failed":
                if culprit.report is not None:  # a later item found our savepoint gone
                    self.count_failure()
                culprit.report = self._report(culprit, "failed", TransactionEnded(), 0.0)
            self.txn.rollback()
            if claim is not None:
                claim.regain()
            for item in ran:
                if item.ended_transaction or (
                    item.report is not None and item.report.status != "succeeded"
                ):
                    continue
                item.has_statements = item.uses_raw = False
                item.statement_error = None
                self._run_item(item, plan)
                if self.txn.ended_by is not None:
                    break  # once more, without the one that ended it

    def count_failure(self) -> None:
        self.failures += 1
        if self.maxfail and self.failures >= self.maxfail and not self.session.shouldstop:
            self.session.shouldstop = f"stopping after {self.maxfail} failure" + (
                "s" if self.maxfail > 1 else ""
            )

    def _abandon(self, item: Item) -> None:
        self.capture.handler.stop()
        self.runtime.teardown("item")
        self.txn.discard(item)
        self.txn.owner = None

    def _finish_chunk(self, chunk: Chunk, ran: list[Item], plan: Plan) -> None:
        try:
            culprits = self.txn.flush()
        except ReplayChunk:
            culprits = self._replay(ran, plan)
        for owner, exc in culprits:
            # -x counts a row rejected at the chunk's end too
            if owner.report is None or not owner.report.failed:
                self.count_failure()
            self._fail_late(owner, exc)
        for item in ran:
            assert item.report is not None, item  # every item that ran has its report
            chunk.reports.append(item.report)
        chunk.reports.sort(key=lambda r: r.finished_epoch)
        self.commit(chunk)

    def _replay(self, ran: list[Item], plan: Plan) -> list[tuple[Item, BaseException]]:
        """Roll the chunk back and run it again, each item writing its own rows."""
        self.txn.rollback()
        self.txn.isolated = True
        try:
            for item in ran:
                item.has_statements = False
                item.statement_error = None
                self._run_item(item, plan)
            culprits: list[tuple[Item, BaseException]] = self.txn.flush()
            return culprits
        finally:
            self.txn.isolated = False

    def _fail_late(self, item: Item, exc: BaseException) -> None:
        """A row ``item`` buffered was rejected when written: the item failed."""
        old = item.report
        fresh = self._report(item, "failed", exc, old.duration_ms if old else 0.0)
        fresh.traceback = None
        if old is not None:
            fresh.log, fresh.finished_epoch = old.log, old.finished_epoch
        item.report = fresh
        self.txn.forget(item)

    def commit(self, chunk: Chunk) -> None:
        """Commit a chunk with what plugins add to it (the outcome rows).

        The COMMIT runs in the background while the next chunk's items run;
        the chunk is counted and reported once it is known to have committed.
        """
        self.hook.ingestkit_chunk_commit(session=self.session, chunk=chunk)
        self.complete()  # the previous chunk's commit, finished by now as a rule
        self.txn.commit_later(chunk.writes, token=chunk)

    def complete(self) -> None:
        """Wait for chunks committing in the background, then count and report them."""
        for chunk in self.txn.take_committed():
            self.report(chunk)

    def report(self, chunk: Chunk) -> None:
        """Count a committed chunk and report it."""
        self.session.count(chunk)
        ihook = self.hook_for(chunk.processor)
        ihook.ingestkit_chunk_finish(session=self.session, chunk=chunk)
        if self.active["ingestkit_runtest_logreport"]:
            for report in chunk.reports:
                ihook.ingestkit_runtest_logreport(report=report)

    # -- one item ----------------------------------------------------------

    def _call(self, item: Item, plan: Plan) -> tuple[str, BaseException | None]:
        """Set up the item's fixtures, call the processor, tear down: the status."""
        runtime, active = self.runtime, self.active
        status: str = "succeeded"
        exc: BaseException | None = None
        runtime.item_nodeid = item.nodeid
        try:
            if active["ingestkit_runtest_setup"]:
                self.ihook.ingestkit_runtest_setup(item=item)
            if plan.static is not None:
                kwargs = dict(plan.static)
                for name, builtin in plan.per_item:
                    kwargs[name] = (
                        item.value
                        if builtin == "record"
                        else item
                        if builtin == "item"
                        else self.log_logger
                    )
            else:
                cache = runtime.cache["item"]
                cache[self.seeded["record"]] = (item.value, None)
                cache[self.seeded["item"]] = (item, None)
                cache[self.seeded["log"]] = (self.log_logger, None)
                kwargs = runtime.kwargs(plan.closure, item.nodeid)
        except Skipped as e:  # ingestkit.skip() in a fixture skips the item, as in pytest
            status, exc = "skipped", e
        except (Exception, SystemExit) as e:  # sys.exit() in user code ends its item only
            status, exc = "error", e
        else:
            try:
                if active["ingestkit_runtest_call"]:
                    self.ihook.ingestkit_runtest_call(item=item, kwargs=kwargs)
                else:  # what the default implementation below does, without the hook call
                    item.processor.func(**kwargs)
            except Skipped as e:
                status, exc = "skipped", e
            except ConnectionLost:
                raise
            except (Exception, SystemExit) as e:
                status, exc = "failed", e
        if active["ingestkit_runtest_teardown"]:
            try:
                self.ihook.ingestkit_runtest_teardown(item=item)
            except (Exception, SystemExit) as e:
                if status in ("succeeded", "skipped"):
                    status, exc = "error", e
        errors = runtime.teardown("item")
        if errors and status in ("succeeded", "skipped"):
            status, exc = "error", errors[0] if len(errors) == 1 else TeardownErrors(errors)
        return status, exc

    def _run_item(self, item: Item, plan: Plan) -> None:
        txn, active = self.txn, self.active
        txn.owner = item
        self.capture.handler.start()
        started = time.perf_counter()
        status, exc = self._outcome(item, plan)
        if txn.ended_by is not None and txn.ended_by is not item:
            item.report = None  # it found a neighbour's doing: it runs again (_run_again)
            txn.owner = None
            self.capture.handler.stop()
            return
        status, exc = self._settle(item, status, exc)
        txn.owner = None
        log = self.capture.handler.stop()
        report = self._report(item, status, exc, (time.perf_counter() - started) * 1000.0)
        report.log = log
        if active["ingestkit_runtest_makereport"]:
            self.ihook.ingestkit_runtest_makereport(item=item, report=report)
        item.report = report

    def _outcome(self, item: Item, plan: Plan) -> tuple[str, BaseException | None]:
        """The item's status and exception: from its record, its fixtures, or its call."""
        if item.entry_error is not None:
            return "error", RecordError(item.entry_error)
        if plan.setup_error is not None:
            skipped = isinstance(plan.setup_error, Skipped)  # a wider fixture's ingestkit.skip()
            return "skipped" if skipped else "error", plan.setup_error
        if plan.model is not None and not _convert(item, plan.model):
            return "error", item.value
        return self._timed_call(item, plan)

    def _timed_call(self, item: Item, plan: Plan) -> tuple[str, BaseException | None]:
        """:meth:`_call`, bounded by --item-timeout."""
        if self.item_timeout:
            self.session.timing_item = True
            signal.setitimer(signal.ITIMER_REAL, self.item_timeout)
        try:
            status, exc = self._call(item, plan)
            if plan.model is not None:  # the typed record was the processor's: free it
                item.value = None
        except ItemTimeout as e:  # it went off between two of ingestkit's own steps
            status, exc = "failed", e
        finally:
            if self.item_timeout:
                self.session.timing_item = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        return status, exc

    def _settle(
        self, item: Item, status: str, exc: BaseException | None
    ) -> tuple[str, BaseException | None]:
        """The status once the transaction had its say: a lost transaction, a failed
        statement or the item's end fail it; a failed item's writes are discarded."""
        txn = self.txn
        if (item.has_statements or txn.ended_by is item) and txn.lost_by(item, item.uses_raw):
            if not isinstance(exc, TransactionEnded):
                exc = TransactionEnded()
            status = "failed"
        elif status == "succeeded" and item.statement_error is not None:
            status, exc = "failed", item.statement_error
        if status == "succeeded" and (item.has_statements or txn.isolated):
            try:
                txn.finish_item(item)
            except ConnectionLost:
                raise
            except Exception as e:
                status, exc = "failed", e
        if status != "succeeded":
            txn.discard(item)
        return status, exc

    def _report(
        self, item: Item, status: str, exc: BaseException | None, duration_ms: float
    ) -> ItemReport:
        report = ItemReport(
            item.processor.nodeid,
            item.key,
            status,
            item.attempt,
            item.content_hash,
            duration_ms,
            finished_epoch=time.time(),
        )
        if status in ("failed", "error") or (
            self.store_all and not (item.record_kept and status == "succeeded" and self.latest_only)
        ):
            payload = None
            if item.record is not None or item.processor.source is not None:
                payload = to_payload(item.record)  # lossless: --lf gets the record back
            report.payload = payload
        if exc is not None:
            mask = self.config.mask
            report.error_type = type(exc).__name__
            report.error_message = mask(
                exc.reason if isinstance(exc, Skipped) else _message(exc)
            ).replace("\x00", "\\0")
            report.location = item.location
            if status in ("failed", "error") and exc.__traceback__ is not None:
                report.traceback = mask(_trim_traceback(exc)).replace("\x00", "\\0")
        return report


class _CachedHooks:
    """A hook proxy whose hook callers are made once (each filters its impls as called)."""

    def __init__(self, hook: Any) -> None:
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        caller = getattr(self._hook, name)
        setattr(self, name, caller)
        return caller


# -- the plugin --------------------------------------------------------------


@hookimpl(trylast=True)
def ingestkit_runtestloop(session: Session) -> bool:
    Runner(session).run()
    return True


@hookimpl(trylast=True)
def ingestkit_chunk_run(runner: Runner, plan: Plan, items: list[Item], read: int) -> bool:
    """Run the chunk here and commit it; the chunks' size follows how fast they ran."""
    started = time.perf_counter()
    runner.run_chunk(plan, items)
    runner.adapt(time.perf_counter() - started, read)
    return True


@hookimpl(trylast=True)
def ingestkit_runtest_call(item: Item, kwargs: dict[str, Any]) -> bool:
    """Call the processor, as pytest's ``pytest_pyfunc_call`` calls a test function."""
    item.processor.func(**kwargs)
    return True


_DEFAULTS = {"ingestkit_runtest_call": ingestkit_runtest_call}


@hookimpl(trylast=True)
def ingestkit_processor_entries(processor: Processor, session: Session) -> Iterable[Entry]:
    return default_entries(processor, session)


def default_entries(processor: Processor, session: Session) -> Iterator[Entry]:
    """A processor's entries read from its source (lazily: errors surface while reading)."""
    if processor.source is None:
        yield Entry(None, processor.nodeid)
        return
    spec = processor.source
    src = spec.src
    if callable(src) and not isinstance(src, Reader) and not hasattr(src, "__iter__"):
        # a source factory: call it with its fixtures; plugins see what it made
        closure = session.fixturemanager.closure(
            processor.nodeid, argnames_of(src), "processor", requester="source", autouse=False
        )
        if closure.error is not None:
            raise closure.error
        runtime = session.fixtures
        request = FixtureRequest(runtime, processor.nodeid, "processor", None, processor)
        kwargs = {name: runtime.value(closure, fdef, request) for name, fdef in closure.args}
        spec = dataclasses.replace(spec, src=src(**kwargs))
    yield from session.collector.hook_for(processor.path).ingestkit_make_source(
        spec=spec, processor=processor, session=session
    )


@hookimpl(trylast=True)
def ingestkit_make_source(spec: Any, processor: Processor, session: Session) -> Iterable[Entry]:
    return iter_entries(spec.src, spec.declared_in)
