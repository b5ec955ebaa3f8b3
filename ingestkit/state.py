"""Incremental state (plugin ``state``): the ``state`` fixture and ``ingestkit.state``.

``state`` is a dict per processor, loaded when the processor starts and saved
in ``ingestkit.state`` by the transaction of each chunk whose items changed it,
so it is never ahead of (or behind) the writes and outcomes it goes with. It
follows the transaction as the lookup cache does (``Transaction.listeners``):
a failing item's change is undone when its writes are (``on_discard``), a
chunk rolled back to run again rewinds it (``on_rollback``). Nothing is done
per item for processors that do not touch it: a change is noticed when the
dict is used, by comparing with the state as it was when the item began.

Under ``-n`` each worker would hold its own copy and overwrite the others':
a processor that uses ``state`` is a usage error there.
"""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import TYPE_CHECKING, Any

import pluggy

from .fixtures import FixtureRequest, argnames_of, fixture
from .outcomes import UsageError
from .queries import q
from .stash import StashKey
from .transaction import Listener

if TYPE_CHECKING:
    from .chunks import Chunk
    from .collection import Processor
    from .session import Session
    from .transaction import Transaction

hookimpl = pluggy.HookimplMarker("ingestkit")

_DELETED = object()
_STASH = StashKey["dict[str, State]"]()


def _default(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    raise TypeError(
        f"state values must be JSON (str, int, float, bool, None, lists and dicts of "
        f"them; dates and times are kept as ISO text), not {type(value).__name__}"
    )


def _dump(value: Any) -> str:
    return json.dumps(value, default=_default, ensure_ascii=False, separators=(",", ":"))


def _dump_lenient(value: Any) -> str:
    """For saving: a value put deep inside a list behind our back is kept as text."""
    try:
        return _dump(value)
    except TypeError:
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def _clone(value: Any) -> Any:
    """A deep copy, as the value will read back from ``ingestkit.state``."""
    return json.loads(_dump_lenient(value))


class _Change:
    """What one item did to the state: the state before it, and (once it is
    over) the keys it set or deleted."""

    __slots__ = ("owner", "before", "changes")

    def __init__(self, owner: Any, before: dict[str, Any]) -> None:
        self.owner = owner
        self.before = before
        self.changes: dict[str, Any] | None = None  # None while the item may still run


class State(dict[str, Any], Listener):
    """The ``state`` fixture: a dict saved with the chunk of the item that changed it.

    Values are JSON; a ``datetime``/``date`` is kept as its ISO 8601 text (so a
    run reads what the next run will). Only an item may change it; a source
    callable or a wider fixture may read it.
    """

    def __init__(self, processor: str, value: dict[str, Any], txn: Transaction) -> None:
        super().__init__(value)
        self._processor = processor
        self._txn = txn
        self._base = _clone(value)  # as committed (or handed to COMMIT)
        self._saved = _dump_lenient(value)  # as in ingestkit.state
        self._journal: list[_Change] = []  # the chunk in flight, by item, in order
        self._owners: set[int] = set()

    # -- noticing changes ---------------------------------------------------

    def _touch(self, writing: bool = False) -> None:
        owner = self._txn.owner
        if owner is None:
            if writing:
                raise RuntimeError(
                    "only an item (a processor call) can change state: a source or a "
                    "fixture may read it, e.g. since = state.get('updated_after')"
                )
            return
        journal = self._journal
        if journal and journal[-1].owner is owner and journal[-1].changes is None:
            return
        self._settle()
        journal.append(_Change(owner, _clone(dict(self))))
        self._owners.add(id(owner))

    def _settle(self) -> None:
        """The last item that used the state is over: note what it changed."""
        if not self._journal or self._journal[-1].changes is not None:
            return
        change = self._journal[-1]
        before = change.before
        changes = {k: _clone(v) for k, v in dict.items(self) if k not in before or before[k] != v}
        changes.update((k, _DELETED) for k in before if not dict.__contains__(self, k))
        if changes:
            change.changes = changes
        else:  # it only read
            self._journal.pop()
            self._owners.discard(id(change.owner))

    def _set_all(self, value: dict[str, Any]) -> None:
        dict.clear(self)
        dict.update(self, value)

    # -- transaction events (see Transaction.listeners) ---------------------

    def on_discard(self, owner: Any) -> None:
        """``owner`` failed (or was skipped): its change goes, its neighbours' stay."""
        if id(owner) not in self._owners:
            return
        journal = self._journal
        if journal[-1].owner is owner:  # the usual case: it just ended
            self._set_all(journal.pop().before)
            self._owners.discard(id(owner))
            return
        self._settle()  # failed later (a row rejected at the chunk's end): replay the rest
        kept = [c for c in journal if c.owner is not owner]
        self._owners.discard(id(owner))
        value = _clone(self._base)
        for change in kept:
            change.before = _clone(value)
            for key, v in (change.changes or {}).items():
                if v is _DELETED:
                    value.pop(key, None)
                else:
                    value[key] = _clone(v)
        self._journal = kept
        self._set_all(value)

    def on_commit(self) -> None:
        self._settle()
        self._base = _clone(dict(self))
        self._journal.clear()
        self._owners.clear()

    def on_rollback(self) -> None:
        self._journal.clear()
        self._owners.clear()
        self._set_all(_clone(self._base))

    def pending(self) -> str | None:
        """The JSON text to save with the chunk now committing, if it changed."""
        self._settle()
        text = _dump_lenient(dict(self))
        if text == self._saved:
            return None
        self._saved = text
        return text

    # -- the dict, watched --------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        self._touch()
        return dict.__getitem__(self, key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._touch()
        return dict.get(self, key, default)

    def values(self) -> Any:
        self._touch()
        return dict.values(self)

    def items(self) -> Any:
        self._touch()
        return dict.items(self)

    def copy(self) -> dict[str, Any]:
        self._touch()
        copied: dict[str, Any] = _clone(dict(self))
        return copied

    def __setitem__(self, key: Any, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"state keys must be strings, not {type(key).__name__}")
        value = json.loads(_dump(value))  # a bad value fails the item that sets it
        self._touch(writing=True)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        self._touch(writing=True)
        dict.__delitem__(self, key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if not dict.__contains__(self, key):
            self[key] = default
        return self[key]

    def pop(self, key: Any, *default: Any) -> Any:
        self._touch(writing=True)
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._touch(writing=True)
        return dict.popitem(self)

    def clear(self) -> None:
        self._touch(writing=True)
        dict.clear(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    # dict's own |= would bypass __setitem__. mypy checks an __ior__ of a dict
    # subclass against dict.__or__'s generic overload, which no Self return satisfies.
    def __ior__(self, other: Any) -> State:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __repr__(self) -> str:
        return f"State({dict.__repr__(self)})"


# -- the fixture and the plugin -------------------------------------------------


@fixture(scope="processor")
def state(request: FixtureRequest) -> Any:
    """This processor's incremental state: a dict in ingestkit.state, saved with each chunk."""
    session = request.config.session
    nodeid = request.nodeid
    with session.control.cursor() as cur:
        cur.execute(q("state-load"), {"processor": nodeid})
        row = cur.fetchone()
    value = row[0] if row and isinstance(row[0], dict) else {}
    txn = session.txn
    assert txn is not None, "the state fixture runs inside a session's transaction"
    current = State(nodeid, value, txn)
    live = request.config.stash.setdefault(_STASH, {})
    live[nodeid] = current
    txn.listeners.append(current)

    def done() -> None:
        live.pop(nodeid, None)
        if current in txn.listeners:
            txn.listeners.remove(current)

    request.addfinalizer(done)
    return current


@hookimpl
def ingestkit_chunk_commit(session: Session, chunk: Chunk) -> None:
    """Save a processor's state with the chunk whose items changed it."""
    current = session.config.stash.get(_STASH, {}).get(chunk.processor.nodeid)
    if current is None:
        return
    text = current.pending()
    if text is None:
        return
    params = {"processor": chunk.processor.nodeid, "value": text, "batch_id": session.batch.id}
    chunk.writes.append(lambda cur: cur.execute(q("state-save"), params))


def uses_state(processor: Processor, session: Session) -> bool:
    """Whether the processor, or its source callable, requests the ``state`` fixture."""
    manager = session.fixturemanager
    closures = [manager.closure(processor.nodeid, argnames_of(processor.func))]
    src = processor.source.src if processor.source is not None else None
    if callable(src) and not hasattr(src, "__iter__"):
        closures.append(
            manager.closure(processor.nodeid, argnames_of(src), "processor", autouse=False)
        )
    return any(fdef.func is state for c in closures for fdef in c.order)


@hookimpl
def ingestkit_collection_finish(session: Session) -> None:
    option = session.config.option
    if not getattr(option, "numprocesses", 0) or option.dry_run:
        return
    users = [p.nodeid for p in session.processors if uses_state(p, session)]
    if users:
        more = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
        raise UsageError(
            f"{users[0]}{more} uses the state fixture, which needs one process: "
            "under -n each worker would keep its own copy; run it without -n "
            f"(e.g. -k 'not {users[0].rpartition('::')[2]}' to run the others with -n)"
        )
