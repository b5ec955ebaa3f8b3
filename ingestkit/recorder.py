"""The PostgreSQL recorder (plugin ``recorder``): items' outcomes and their history.

Outcome rows are COPYed into a temp table and moved into ``ingestkit.items``
and ``ingestkit.latest`` by one statement, inside the chunk's transaction:
every process that commits chunks (one run, a leader, a worker) records them
so. The batch's own row and locks are :mod:`ingestkit.batches`'.
"""

from __future__ import annotations

import functools
import io
import json
import re
from typing import TYPE_CHECKING, Any

import pluggy

from .config import DEFAULTS
from .copy import NULL, copy_field, copy_rows
from .queries import q
from .reports import History, ItemReport
from .stash import StashKey

if TYPE_CHECKING:
    from .chunks import Chunk
    from .collection import Processor
    from .config import Config
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: First key of the advisory locks that let one batch at a time run a processor.
PROCESSOR_NAMESPACE = 0x696B_0003
#: First key of the two-key advisory locks that mark live batches.
LOCK_NAMESPACE = 0x696B_0002
#: Processors with no recorded outcome before this batch: their chunks need no history.
NEW_PROCESSORS = StashKey[set[str]]()
#: Node ids this process knows to have their number in ``ingestkit.processors``.
NUMBERED = StashKey[set[str]]()


def mark_interrupted(conn: Any, own: Any = None) -> list[str]:
    """Mark batches whose process died as ``interrupted``; return their ids."""
    with conn.cursor() as cur:
        cur.execute(q("mark-interrupted"), {"own": own, "ns": LOCK_NAMESPACE})
        ids = [str(r[0]) for r in cur.fetchall()]
        cur.execute(q("drop-dispatch"), {"batch_id": None})  # the queues of batches now over
    conn.commit()
    return ids


def is_new(session: Session, nodeid: str) -> bool:
    """Whether the processor had no recorded outcome before this batch."""
    return nodeid in session.config.stash.get(NEW_PROCESSORS, set())


@hookimpl(tryfirst=True)
def ingestkit_batch_start(session: Session) -> None:
    """The outcome rows' staging table, and the guard against a processor's COMMIT."""
    assert session.txn is not None, "a batch starts with the database open"
    conn = session.txn.conn
    with conn.cursor() as cur:
        cur.execute(q("create-outcomes-table"))
        cur.execute(q("create-commit-guard"))
    conn.commit()


@hookimpl
def ingestkit_chunk_history(
    session: Session, processor: Processor, keys: list[str]
) -> dict[str, History]:
    """The latest committed outcomes, read on the control connection.

    Committed data is all that matters here: a key seen earlier in this batch
    is a duplicate, caught before its history is looked at.
    """
    if is_new(session, processor.nodeid):
        return {}  # a first load: nothing can be ingested already
    with session.control.cursor() as cur:
        cur.execute(q("history"), {"processor": processor.nodeid, "keys": key_list(keys)})
        return {row[0]: History(*row[1:]) for row in cur.fetchall()}


def key_list(keys: list[str]) -> str:
    """Keys as the JSON array that queries.sql's ``history`` and
    ``restore-succeeded`` take (stored keys hold no NUL or lone surrogate)."""
    return json.dumps(keys, ensure_ascii=False)


@functools.cache
def record_outcomes(first_load: bool) -> str:
    """The statement that moves a chunk's outcome rows to their tables (queries.sql)."""
    latest = (
        q("insert-latest") if first_load else f"{q('insert-latest')}\n{q('latest-on-conflict')}"
    )
    # with history, each row notes the fields it changed (SPEC §9, "what changed")
    items = q("insert-items") if first_load else q("insert-items-changes")
    return ";\n".join((items, latest, q("truncate-outcomes")))


def store_payloads(config: Config) -> str:
    """``store_payloads``: ``failed``, ``latest`` (the default) or ``all``."""
    return str(config.get("store_payloads", DEFAULTS["store_payloads"]))


def store_all(session: Session) -> bool:
    """Whether ``ingestkit.items`` keeps every item's record (``store_payloads = all``);
    with ``latest`` (the default) only ``ingestkit.latest`` keeps succeeded ones."""
    return store_payloads(session.config) == "all"


def outcome_rows(reports: list[ItemReport]) -> bytes:
    """A chunk's reports as COPY text for ``pg_temp.ingestkit_outcomes``.

    Most reports are plain successes: they take a short path with no
    per-field conversion; the rest go through :func:`copy_rows`.
    """
    lines = []
    plain = []
    escaped: dict[str, str] = {}
    for seq, r in enumerate(reports):
        if r.error_type is None and r.log is None and r.location is None:
            # a plain success (with its record, store_payloads = latest): no per-field work
            proc = escaped.get(r.processor)
            if proc is None:
                proc = escaped[r.processor] = copy_field(r.processor)
            payload = NULL if r.payload is None else copy_field(r.payload)
            digest = _uuid_hash(r.content_hash)
            lines.append(
                f"{seq}\t{proc}\t{copy_field(r.key)}\t{r.status}\t{r.attempt}\t"
                f"{r.content_hash or NULL}\t{r.duration_ms!r}\t{NULL}\t{NULL}\t{NULL}\t{NULL}\t"
                f"{payload}\t{r.finished_epoch!r}\t{NULL}\t{'t' if r.track else 'f'}\t"
                f"{NULL if digest is None else digest}\n"
            )
        else:
            plain.append(
                (
                    seq,
                    r.processor,
                    r.key,
                    r.status,
                    r.attempt,
                    r.content_hash,
                    r.duration_ms,
                    _readable(r.error_type),
                    _readable(r.error_message),
                    _readable(r.traceback),
                    _readable(r.log),
                    r.payload,
                    r.finished_epoch,
                    _readable(r.location),
                    r.track,
                    _uuid_hash(r.content_hash),
                )
            )
    # keys and payloads are made storable before (sources.storable_key, to_payload)
    data = "".join(lines).encode("utf-8", "backslashreplace")
    return data + copy_rows(plain, errors="backslashreplace") if plain else data


_HEX32 = re.compile("[0-9a-f]{32}").fullmatch


def _uuid_hash(content_hash: str | None) -> str | None:
    """The hash for the temp table's uuid column: 32 lowercase hex digits, as
    content_hash() makes them; any other (a plugin's) is None and stays text."""
    return content_hash if content_hash and _HEX32(content_hash) else None


def _readable(text: str | None) -> str | None:
    """Message text PostgreSQL can hold: NUL as ``\\0``, a lone surrogate as ``\\udXXX``."""
    if text is None or text.isascii() and "\0" not in text:
        return text
    return text.replace("\0", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")


@hookimpl
def ingestkit_chunk_commit(session: Session, chunk: Chunk) -> None:
    """Add the chunk's outcome rows to what commits with it."""
    params = {"batch_id": session.batch.id, "store_all": store_all(session)}
    if chunk.restored:
        restore = {"processor": chunk.processor.nodeid, "keys": key_list(chunk.restored)}
        chunk.writes.append(lambda cur: cur.execute(q("restore-succeeded"), restore))
    if not chunk.reports:
        return
    _number_processors(session, chunk.processor.nodeid)
    data = outcome_rows(chunk.reports)
    # A processor with no recorded outcome gets plain inserts into ingestkit.latest:
    # its lock keeps other batches out, and a key comes once per batch. Key "" is
    # the exception: a broken source's error item may share it with a record.
    first_load = is_new(session, chunk.processor.nodeid) and all(r.key for r in chunk.reports)
    statement = record_outcomes(first_load)

    def write_outcomes(cur: Any) -> None:
        # one read of the whole payload: each read would wait for the GIL
        cur.copy_expert(q("outcomes-copy"), io.BytesIO(data), size=len(data) + 1)
        cur.execute(statement, params)

    chunk.writes.append(write_outcomes)


def _number_processors(session: Session, nodeid: str) -> None:
    """Give the processor a number in ``ingestkit.processors``, committed before the
    first chunk whose outcome rows refer to it (on the control connection)."""
    known = session.config.stash.setdefault(NUMBERED, set())
    if nodeid not in known:
        with session.live_control().cursor() as cur:
            cur.execute(q("number-processors"), {"processors": [nodeid]})
        known.add(nodeid)
