"""One batch's write transaction: chunks, lazy item savepoints, buffered inserts.

Items run in chunks inside one transaction. The guarantees of §3 are kept
without a round trip per item:

* ``db.insert`` rows are buffered and written with COPY at chunk end, or before
  any statement that could read them;
* a savepoint is taken only when an item sends a statement, piggy-backed on
  that statement's own round trip; a failing item rolls back to it;
* a COPY that fails is bisected under savepoints to pin the failure on the
  item(s) whose rows caused it, and their neighbours' rows are written;
* the chunk commits once, with the outcome rows the recorder adds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .copy import copy_field, copy_rows
from .queries import q

_ITEM_SP = "ingestkit_item"
_UNDO_FLUSH = "ROLLBACK TO SAVEPOINT ingestkit_flush; RELEASE SAVEPOINT ingestkit_flush"
_ARM = q("arm-commit-guard").rstrip().rstrip(";").encode() + b"; "
_NOBODY = object()
#: the CONTEXT of a COPY error that names the column: "COPY t, line 3, column c: ..."
_COPY_COLUMN = re.compile(r"^COPY [^\n]*?, line (\d+), column ([^\n]+?): ", re.M)


class BatchAborted(BaseException):
    """The batch cannot go on; nothing uncommitted is kept.

    A ``BaseException``, as pytest's outcomes are: a processor's ``except
    Exception`` around ``db.execute`` must not swallow it and carry on.
    """


class ConnectionLost(BatchAborted):
    """The database connection went away; the chunk in flight is lost."""


class ChunkLost(BatchAborted):
    """ingestkit's own writes of a chunk (its outcome rows) failed: the chunk was
    rolled back whole, its items' writes with it, and the batch stops."""


class TransactionEnded(RuntimeError):
    """A processor ended ingestkit's transaction (COMMIT, ROLLBACK, END...)."""

    def __init__(self) -> None:
        super().__init__(
            "the processor ended the transaction (COMMIT or ROLLBACK): ingestkit commits "
            "each item's writes together with its outcome; do not commit or roll back "
            "inside a processor"
        )


class ReplayChunk(Exception):
    """A flush failure cannot be undone item by item: replay the chunk isolated."""

    def __init__(self, culprits: list[tuple[Any, BaseException]]) -> None:
        super().__init__("replay")
        self.culprits = culprits


def _critical(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` as one step that Ctrl-C does not cut in two.

    A SIGINT (or an item's timeout) arriving while ingestkit talks to the
    database or updates what it knows of the transaction (savepoints, buffered
    rows) is held back and raised when the step is done, so the bookkeeping
    always matches the database. In the processor's own code it is raised at
    once, as usual.
    """

    @functools.wraps(method)
    def step(self: Transaction, *args: Any, **kwargs: Any) -> Any:
        with self.uninterrupted():
            return method(self, *args, **kwargs)

    return step


def _as_bytes(query: Any, cur: Any) -> bytes:
    if isinstance(query, sql.Composable):
        query = query.as_string(cur)
    if isinstance(query, str):
        return query.encode(psycopg2.extensions.encodings.get(cur.connection.encoding, "utf-8"))
    raw: bytes = query
    return raw


_WRITE = re.compile(
    rb"\b(?:insert\s+into|update|delete\s+from|merge\s+into|copy|truncate(?:\s+table)?"
    rb"|alter\s+table|drop\s+table(?:\s+if\s+exists)?)\s+(?:only\s+)?"
    rb'((?:"(?:[^"]|"")+"|[\w$]+)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[\w$]+))?)',
    re.IGNORECASE,
)
_OPAQUE = re.compile(rb"\b(?:do|call|execute|create|refresh|vacuum|cluster|reindex)\b", re.I)


def written_tables(statement: bytes) -> set[str] | None:
    """The tables a statement writes, as far as its text says: ``{}`` for a plain
    read; None when it may write others (a function, a procedure, DDL...).

    Names are given without schema, folded as PostgreSQL folds them. Writes by
    triggers and by functions called from a SELECT are not seen.
    """
    if _OPAQUE.search(statement):
        return None
    found = set()
    for match in _WRITE.finditer(statement):
        name = match.group(1).decode("utf-8", "replace").split(".")[-1].strip()
        found.add(name[1:-1].replace('""', '"') if name.startswith('"') else name.lower())
    return found


@functools.lru_cache(maxsize=1024)
def bare_name(table: str) -> str:
    """A ``db.insert``/``lookup`` table name (always quoted: exact) as
    :func:`written_tables` gives it."""
    return table.split(".")[-1]


@dataclasses.dataclass(frozen=True)
class _Loader:
    copy: str  # COPY into the staging table
    run: str  # the loop: (n, sqlstate, message, detail, column) of each row that failed


_LOADER = """
CREATE FUNCTION pg_temp.{function}()
RETURNS TABLE (n int, state text, message text, detail text, col text)
LANGUAGE plpgsql AS $loader$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM pg_temp.{stage} s ORDER BY s.n LOOP
        BEGIN
            {insert};
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                detail = PG_EXCEPTION_DETAIL;
            n := r.n;
            col := NULL;
            IF state LIKE '22%' THEN
                {probes}
            END IF;
            RETURN NEXT;
        END;
    END LOOP;
    DELETE FROM pg_temp.{stage};
END
$loader$
"""


def _chunk_lost_message(token: Any, error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    what = "a chunk"
    reports = getattr(token, "reports", None)
    if reports is not None:
        what = f"a chunk of {len(reports)} items of {token.processor.nodeid}"
    from .database import resource_problem  # (database imports this module)

    problem = resource_problem(error)
    return (
        f"could not record the outcomes of {what}: {first}; the chunk was rolled back "
        "whole (none of its writes are in the database): rerun to process it"
        + (f". {problem}" if problem else "")
    )


def table_identifier(name: str) -> sql.Composable:
    """``"schema.table"`` or ``"table"`` as a quoted identifier."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"not a table name: {name!r}")
    return sql.Identifier(*parts)


def _distinct(values: list[tuple[Any, ...]], where: list[int]) -> bool:
    """Whether no two rows can have the same conflict key: one key column whose
    values are all distinct and of one type (so their COPY texts differ too)."""
    if len(where) != 1:
        return False
    keys = [row[where[0]] for row in values]
    try:
        return len(set(keys)) == len(keys) and len(set(map(type, keys))) == 1
    except TypeError:  # unhashable (a list): compared by text
        return False


def _blank_to_null(row: tuple[Any, ...], blank: list[int]) -> tuple[Any, ...]:
    for i in blank:
        if type(row[i]) is str and row[i] == "":
            return tuple(
                None if i in blank and v == "" and type(v) is str else v for i, v in enumerate(row)
            )
    return row


def _name_the_column(exc: Any, table: str, cols: tuple[Any, ...], values: list[Any]) -> None:
    """Give a COPY error that names a column a message naming table, column and value
    (``exc.ingestkit_message``, used for the item's error_message)."""
    context = getattr(getattr(exc, "diag", None), "context", None) or ""
    match = _COPY_COLUMN.search(context)
    if match is None:
        return
    line, column = int(match.group(1)), match.group(2)
    shown = ""
    if column in cols and 0 < line <= len(values):
        value = values[line - 1][cols.index(column)]
        text = repr(value)
        shown = f" {text if len(text) <= 80 else text[:77] + '...'}"
    primary = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    exc.ingestkit_message = f"table {table}, column {column}: value{shown} rejected: {primary}"


def _with_params(query: Any, cur: Any) -> Any:
    """``query`` as text for ``mogrify`` with parameters.

    A composed statement's identifiers and literals are data: their ``%`` is
    doubled, so that ``"a%b"`` or ``"x%sy"`` is not read as a placeholder.
    Only its ``sql.SQL`` parts (and placeholders) are the caller's template.
    """
    if isinstance(query, sql.Composed):
        return "".join(_with_params(part, cur) for part in query.seq)
    if isinstance(query, (sql.SQL, sql.Placeholder)):
        return query.as_string(cur)
    if isinstance(query, sql.Composable):
        return query.as_string(cur).replace("%", "%%")
    return query


def is_connection_error(conn: Any, exc: BaseException) -> bool:
    return isinstance(exc, (psycopg2.InterfaceError, psycopg2.OperationalError)) and bool(
        conn.closed
    )


class Listener:
    """What a listener of a transaction is told (``Transaction.listeners``); the
    lookup cache and the ``state`` fixture follow the transaction this way."""

    def on_write(self, owner: Any, tables: set[str] | None) -> None:
        """``owner`` writes ``tables`` (None: it may write any table)."""

    def on_discard(self, owner: Any) -> None:
        """``owner``'s work is undone (the item failed)."""

    def on_commit(self) -> None:
        """The chunk's work is handed to COMMIT."""

    def on_rollback(self) -> None:
        """The chunk's work is gone."""


class Transaction:
    """The write connection of a batch, and what is pending in its transaction."""

    def __init__(self, conn: Any, dry_run: bool = False) -> None:
        self.conn = conn
        self.dry_run = dry_run
        self.owner: Any = None  # the item running now, or None
        self._savepoint_owner: Any = _NOBODY
        self._rows: list[tuple[Any, tuple[Any, ...], tuple[Any, ...]]] = []
        self._table_oids: dict[str, int | None] = {}
        self._sees_others: set[str] = set()  # views and the like: reading them flushes all
        self._row_tables: set[str] = set()  # the tables of the buffered rows (or more)
        self._loaders: dict[tuple[str, tuple[str, ...]], _Loader] = {}  # committed ones
        self._new_loaders: dict[tuple[str, tuple[str, ...]], _Loader] = {}  # this transaction's
        self._loader_seq = 0
        #: (table, columns) of rows whose last flush had rows rejected (see _flush_protected)
        self._rejecting: set[tuple[str, tuple[str, ...]]] = set()
        self._fk_parents: dict[int, set[int]] = {}
        #: per table: its columns and whether each is of a text type (None: unknown)
        self._columns: dict[str, dict[str, bool] | None] = {}
        self._targets: dict[tuple[Any, ...], tuple[tuple[str, ...], list[int]]] = {}
        self._temps: dict[tuple[Any, ...], str] = {}  # upsert staging tables, per table and columns
        self.isolated = False  # replay mode: every item flushes its own rows
        self._job: threading.Thread | None = None  # a chunk committing in the background
        self._job_error: BaseException | None = None
        self._job_token: Any = None
        self._committed: list[Any] = []  # tokens of background commits known to have succeeded
        self._depth = 0  # inside a _critical step
        self._deferred: bytes | None = None  # see deferred_check()
        self._interrupted: BaseException | None = None  # a signal came during one
        self._late_failures: list[tuple[Any, BaseException]] = []
        self._in_chunk = False
        self._held = False  # a claim's row locks keep the transaction open (see claim)
        self._guarded = False  # the commit guard is armed in this transaction
        #: the item whose own statement ended the transaction (see lost_by)
        self.ended_by: Any = None
        #: told of what becomes of the chunk's work: ``on_commit()`` (the chunk is
        #: handed to COMMIT), ``on_rollback()``, ``on_discard(owner)`` (one item's)
        self.listeners: list[Listener] = []
        #: why the batch cannot go on; raised again by every later step
        self.aborted: BatchAborted | None = None
        #: sent before a chunk's bookkeeping writes (see bound_statements)
        self.bookkeeping_setup: str | None = None
        self.timed = False  # items run under an --item-timeout alarm (main thread)

    def bound_statements(self, seconds: float) -> None:
        """Make ``seconds`` the statement_timeout of the items' statements only."""
        with self.conn.cursor() as cur:
            cur.execute(q("show-statement-timeout"))
            default = cur.fetchone()[0]
            cur.execute(q("set-statement-timeout"), (f"{int(seconds * 1000)}ms",))
            if not self.dry_run:  # a dry run's one transaction keeps the items' bound
                self.bookkeeping_setup = cur.mogrify(
                    q("set-local-statement-timeout"), (default,)
                ).decode()
        self.conn.commit()
        self.timed = threading.current_thread() is threading.main_thread()

    def on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT handler for the batch: see :func:`_critical`."""
        self.interrupt(KeyboardInterrupt())

    @contextlib.contextmanager
    def uninterrupted(self) -> Iterator[None]:
        """A step that Ctrl-C does not cut in two (see :func:`_critical`)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._interrupted is not None:
                interruption, self._interrupted = self._interrupted, None
                raise interruption

    def interrupt(self, exc: BaseException) -> None:
        """Raise ``exc`` now, or at the end of the critical step under way."""
        if self._depth:
            if self._interrupted is None:
                self._interrupted = exc
        else:
            raise exc

    # -- statements --------------------------------------------------------

    @_critical
    def execute(
        self, query: Any, params: Any = None, reads_only: bool = False, reads: str | None = None
    ) -> Any:
        """Run one statement for the current owner; returns the cursor.

        ``reads_only`` statements (lookups) do not make the owner one whose
        writes need a replay to undo. ``reads``: the one table the statement
        reads (a lookup's), so that only the buffered rows it can see are
        written first; else every buffered row is.
        """
        self.wait()
        owner = self.owner
        if owner is not None and owner is self.ended_by:
            raise TransactionEnded()  # its transaction is gone: nothing more of it runs
        cur = self.conn.cursor()
        # Client-side problems (a parameter too few, a NUL in a string) raise
        # here, before anything reaches the server or the savepoints change.
        statement = (
            cur.mogrify(_with_params(query, cur), params)
            if params is not None
            else _as_bytes(query, cur)
        )
        prefix = self._prepare(owner, reads)
        if not reads_only and self.listeners:
            self._wrote(owner, written_tables(statement))
        try:
            cur.execute(prefix + statement if prefix else statement)
        except psycopg2.Error as exc:
            self._statement_failed(exc, owner, prefix)
            raise
        if self._ended_here(owner):
            raise TransactionEnded()
        if prefix:
            self._savepoint_owner = owner
        if owner is not None and not reads_only:
            owner.has_statements = True
        return cur

    def _statement_failed(self, exc: psycopg2.Error, owner: Any, prefix: bytes) -> None:
        """Account for a statement the server refused; raises in place of ``exc`` when the
        connection or the transaction is gone, else returns for ``exc`` to be raised."""
        if is_connection_error(self.conn, exc):
            raise ConnectionLost(str(exc).strip()) from exc
        if self._ended_here(owner):  # a refused COMMIT: the server rolled back
            return
        if prefix and exc.pgcode == "3B001" and self._savepoint_owner not in (_NOBODY, owner):
            # the savepoint's owner released or rolled back past it: the
            # transaction is aborted now, through that item's doing
            self._lost(self._savepoint_owner)
            raise TransactionEnded() from exc
        if prefix and exc.pgcode != "3B001":  # the savepoint ran; the statement failed
            self._savepoint_owner = owner
        if owner is None:
            # sources and wider fixtures: keep the transaction usable
            self._rollback_to_savepoint()
        elif owner.statement_error is None:  # the first error is the cause
            owner.statement_error = exc

    @_critical
    def batch_statement(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one of the batch's own statements (its locks, its row): the rows.

        The batch's advisory locks live on this, the committing connection: a
        run that lost them cannot commit anything more, so no other run can
        take its processors over while it still writes. Outside a chunk the
        statement commits at once (except in a dry run's one transaction).
        """
        self.wait()
        try:
            with self.conn.cursor() as cur:
                cur.execute(query, params)
                rows = cur.fetchall() if cur.description else []
            if not (self._in_chunk or self.dry_run or self._held):
                self.conn.commit()
        except psycopg2.Error as exc:
            if is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            raise
        return rows

    @_critical
    def connection_for(self, owner: Any) -> Any:
        """The raw connection, after making ``owner``'s writes through it undoable.

        The transaction is ingestkit's: a processor that commits or rolls back
        on it fails (see :meth:`lost_by`).
        """
        if owner is not None:
            self.execute("SELECT 1")
            owner.uses_raw = True
        self.wait()
        return self.conn

    def _ended_here(self, owner: Any) -> bool:
        """After a statement: did it end the chunk's transaction? (No round trip.)"""
        if not self._in_chunk:
            return False
        if self.conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            return False
        self._lost(owner)
        return True

    def _lost(self, owner: Any) -> None:
        self.ended_by = owner if owner is not None else self.owner
        self._savepoint_owner = _NOBODY
        self._in_chunk = False
        self._guarded = False
        self._held = False
        self._rows = []
        self._late_failures = []
        self._rolled_back()
        self.conn.rollback()  # psycopg2 still thinks a transaction is open: resync it

    @_critical
    def lost_by(self, owner: Any, raw: bool) -> bool:
        """True if ``owner`` ended the chunk's transaction (its other items' writes
        are gone with it). ``raw``: it used the raw connection, which ingestkit
        cannot watch statement by statement, so the guard row is looked for."""
        self.wait()
        if self.ended_by is owner:
            return True
        if not self._in_chunk:
            return False
        idle: bool = (
            self.conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        )
        if not idle and raw and self._guarded:
            # a ROLLBACK followed by more statements: a new transaction, without the guard
            try:
                with self.conn.cursor() as cur:
                    cur.execute(q("commit-guard-armed"))
                    idle = not cur.fetchone()[0]
            except psycopg2.Error as exc:
                if is_connection_error(self.conn, exc):
                    raise ConnectionLost(str(exc).strip()) from exc
                idle = False  # a failed transaction of its own: rolled back below
        if idle:
            self._lost(owner)
        return idle

    def _prepare(self, owner: Any, reads: str | None = None) -> bytes:
        """Flush what must be visible and return the savepoint prefix for ``owner``.

        Other owners' rows are written first, outside ``owner``'s savepoint, so
        that rolling back to it undoes only ``owner``'s work. The caller sends
        the prefix with its statement and then records the new savepoint owner.
        """
        self.begin()
        tables = None
        if reads is not None and self._rows:
            tables = self.visible_to(reads)
            if tables is not None and not tables & self._row_tables:
                tables = set()  # nothing buffered that this read can see: no scan at all
        if tables != set() and any(row[0] is not owner for row in self._rows):
            self._flush_others(owner, tables)
        prefix = b""
        if not self._guarded:
            self._guarded = True
            prefix = _ARM
        if self._savepoint_owner is not owner:
            release = "" if self._savepoint_owner is _NOBODY else f"RELEASE SAVEPOINT {_ITEM_SP}; "
            prefix += f"{release}SAVEPOINT {_ITEM_SP}; ".encode()
        if tables != set() and any(tables is None or row[1][0] in tables for row in self._rows):
            # owner's own buffered rows go in under its savepoint
            if prefix:
                self._raw(prefix.decode()[:-2])
                self._savepoint_owner = owner
                prefix = b""
            self._flush_own(owner, tables)
        if tables:
            self._row_tables -= tables  # every buffered row of them is written now
        elif tables is None:
            self._row_tables = {row[1][0] for row in self._rows}
        return prefix

    def visible_to(self, table: str) -> set[str] | None:
        """The buffered tables whose rows a read of ``table`` can see: the table
        and its foreign-key ancestors among them (a row of it may need theirs).
        None: every table (``table`` is a view, or unknown)."""
        self._oid(table)
        if table in self._sees_others:
            return None
        oids = {t: self._oid(t) for t in self._row_tables}
        seen = {table}
        todo = [self._table_oids[table]]
        while todo:
            parents = self._fk_parents.get(todo.pop() or 0, set())
            for other, oid in oids.items():
                if other not in seen and oid in parents:
                    seen.add(other)
                    todo.append(oid)
        same = {t for t, oid in oids.items() if oid == self._table_oids[table]}
        return seen | same

    def _raw(self, statement: str) -> None:
        self.wait()
        try:
            with self.conn.cursor() as cur:
                cur.execute(statement)
        except psycopg2.Error as exc:
            if is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            raise

    def _rollback_to_savepoint(self) -> None:
        if self._savepoint_owner is not _NOBODY:
            self._raw(f"ROLLBACK TO SAVEPOINT {_ITEM_SP}")

    # -- items -------------------------------------------------------------

    def insert(
        self, owner: Any, table: str, rows: Sequence[tuple[tuple[str, ...], tuple[Any, ...]]]
    ) -> None:
        """Buffer rows, as (columns, values), for one COPY per table at chunk end."""
        append = self._rows.append
        for cols, values in rows:
            append((owner, (table, cols), values))
        self._row_tables.add(table)
        if self.listeners:
            self._wrote(owner, {table})

    def upsert(
        self,
        owner: Any,
        table: str,
        rows: Sequence[tuple[tuple[str, ...], tuple[Any, ...]]],
        conflict: tuple[Any, ...],
    ) -> None:
        """Buffer rows, as (columns, values), for ``INSERT ... ON CONFLICT (conflict)
        DO UPDATE``, written per chunk: COPY into a staging table, then one
        INSERT ... SELECT."""
        append = self._rows.append
        for cols, values in rows:
            append((owner, (table, cols, conflict), values))
        self._row_tables.add(table)  # a read of the table writes them first, as inserts
        if self.listeners:
            self._wrote(owner, {table})

    @_critical
    def discard(self, owner: Any) -> None:
        """Undo everything ``owner`` wrote: its savepoint, its buffered rows."""
        rows = self._rows
        # An owner's rows are always the last ones: other items' rows were
        # written (flushed) before its first statement or came before it.
        while rows and rows[-1][0] is owner:
            rows.pop()
        if self._savepoint_owner is owner and owner is not None:
            self._rollback_to_savepoint()
        self.forget(owner)

    def forget(self, owner: Any) -> None:
        """Tell the listeners that ``owner``'s work is undone."""
        for listener in self.listeners:
            listener.on_discard(owner)

    def _wrote(self, owner: Any, tables: set[str] | None) -> None:
        """Tell the listeners that ``owner`` writes ``tables`` (None: it may write any)."""
        for listener in self.listeners:
            listener.on_write(owner, tables)

    def _committing(self) -> None:
        if not self.dry_run:
            self._loaders.update(self._new_loaders)
            self._new_loaders.clear()
        for listener in self.listeners:
            listener.on_commit()

    def _rolled_back(self) -> None:
        self._new_loaders.clear()  # made in the transaction that is gone
        for listener in self.listeners:
            listener.on_rollback()

    @_critical
    def finish_item(self, owner: Any) -> None:
        """Called after a successful item: check its deferred constraints now, and
        in replay mode write its rows now, so that a violation is its own."""
        if self.isolated and any(r[0] is owner for r in self._rows):
            self.owner = owner
            try:
                self._prepare(owner)
            finally:
                self.owner = None
        if owner.has_statements and self.deferred_check():
            self.owner = owner
            try:
                self.execute(self.deferred_check()).close()
            finally:
                self.owner = None

    def deferred_check(self) -> bytes:
        """A statement that checks the initially-deferred constraints now ("" if none).

        Such a constraint would otherwise be checked at COMMIT, where a
        violation could not be pinned on the item that caused it.
        """
        if self._deferred is None:
            self.wait()
            with self.conn.cursor() as cur:
                cur.execute(q("deferred-constraints"))
                names = ", ".join(row[0] for row in cur.fetchall())
            self._deferred = (
                f"SET CONSTRAINTS {names} IMMEDIATE; SET CONSTRAINTS {names} DEFERRED".encode()
                if names
                else b""
            )
        return self._deferred

    # -- flushing ----------------------------------------------------------

    def _flush_own(self, owner: Any, tables: set[str] | None = None) -> None:
        """Write ``owner``'s rows (of ``tables``): a failure is its own (raised into the item)."""
        if tables is None:
            rows, self._rows = self._rows, []
        else:
            rows = [r for r in self._rows if r[1][0] in tables]
            self._rows = [r for r in self._rows if r[1][0] not in tables]
        try:
            self._copy(rows)
        except (psycopg2.Error, UnicodeEncodeError) as exc:
            if isinstance(exc, psycopg2.Error) and is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            if owner is not None and owner.statement_error is None:
                owner.statement_error = exc
            raise

    def _flush_others(
        self, keep: Any, tables: set[str] | None = None
    ) -> list[tuple[Any, BaseException]]:
        """Write other owners' rows (of ``tables``); pin failures on them and return those."""
        def written(row: tuple[Any, ...]) -> bool:
            return row[0] is not keep and (tables is None or row[1][0] in tables)

        others = [r for r in self._rows if written(r)]
        self._rows = [r for r in self._rows if not written(r)]
        culprits = self._flush_protected(others)
        self._late_failures.extend(culprits)
        return culprits

    @_critical
    def flush(self) -> list[tuple[Any, BaseException]]:
        """Write every buffered row (chunk end). Returns ``(owner, error)`` of rows that failed."""
        self.begin()
        if self._rows:
            self._flush_others(_NOBODY)
        culprits, self._late_failures = self._late_failures, []
        if any(owner is not None and owner.has_statements for owner, _ in culprits):
            raise ReplayChunk(culprits)
        return culprits

    def _flush_protected(self, rows: list[Any]) -> list[tuple[Any, BaseException]]:
        if not rows:
            return []
        self.wait()  # the chunk before may still be committing on this connection
        group = rows[0][1]
        if group in self._rejecting:
            # this table rejected rows in the chunk before: rather than a COPY
            # that fails again (and the rows encoded and sent twice), straight
            # to the row-by-row loader, which costs the same whatever the share
            owners = list(dict.fromkeys(r[0] for r in rows))
            if self._loadable(rows, owners):
                culprits = self._load_row_by_row(rows)
                if culprits is not None:
                    if not culprits:  # clean again: the next chunk tries a COPY
                        self._rejecting.discard(group)
                    return culprits
        self._raw("SAVEPOINT ingestkit_flush")
        try:
            self._copy(rows)
            if self.deferred_check():
                with self.conn.cursor() as cur:
                    cur.execute(self.deferred_check())
        except (psycopg2.Error, UnicodeEncodeError) as exc:
            if isinstance(exc, psycopg2.Error) and is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            self._raw(_UNDO_FLUSH)
            owners = list(dict.fromkeys(r[0] for r in rows))
            if len(owners) == 1:
                return [(owners[0], exc)]
            if isinstance(exc, psycopg2.Error) and self._loadable(rows, owners):
                culprits = self._load_row_by_row(rows)
                if culprits is not None:
                    self._rejecting.add(group)
                    return culprits
            half = set(owners[: len(owners) // 2])
            first = [r for r in rows if r[0] in half]
            second = [r for r in rows if r[0] not in half]
            return self._flush_protected(first) + self._flush_protected(second)
        self._raw("RELEASE SAVEPOINT ingestkit_flush")
        return []

    def _loadable(self, rows: list[Any], owners: list[Any]) -> bool:
        """Can a failed COPY of ``rows`` go again row by row on the server? One
        table, one row per item, and no deferred constraint to check at the end."""
        return (
            len(owners) == len(rows)
            and len(rows[0][1]) == 2  # inserts (upserts have their own staging)
            and len({r[1] for r in rows}) == 1
            and not self.deferred_check()
            and self._oid(rows[0][1][0]) is not None
        )

    def _load_row_by_row(self, rows: list[Any]) -> list[tuple[Any, BaseException]] | None:
        """Stage the rows as text and insert them one at a time in a server-side
        loop, each under its own exception block: one round trip for the whole
        group, whatever the share of bad rows (a bisection pays a few per bad row)."""
        table, keys = rows[0][1]
        cols, blank = self._target(table, keys)
        values = [r[2] for r in rows]
        if blank:  # as the COPY had it: '' into a column not of a text type is NULL
            values = [_blank_to_null(v, blank) for v in values]
        loader = self._loaders.get((table, cols)) or self._new_loaders.get((table, cols))
        with self.conn.cursor() as cur:
            if loader is None:
                loader = self._make_loader(cur, table, cols)
                if loader is None:
                    return None
            data = copy_rows([(n, *v) for n, v in enumerate(values)])
            self._raw("SAVEPOINT ingestkit_flush")
            try:  # a row even text cannot hold (a NUL byte): the bisection pins it
                cur.copy_expert(loader.copy, io.BytesIO(data), size=len(data) + 1)
            except psycopg2.Error as exc:
                if is_connection_error(self.conn, exc):
                    raise ConnectionLost(str(exc).strip()) from exc
                self._raw(_UNDO_FLUSH)
                return None
            self._raw("RELEASE SAVEPOINT ingestkit_flush")
            cur.execute(loader.run)
            failed = cur.fetchall()
        culprits: list[tuple[Any, BaseException]] = []
        for n, state, message, detail, column in failed:
            try:
                error_class = psycopg2.errors.lookup(state)
            except KeyError:
                error_class = psycopg2.DatabaseError
            error = error_class(f"{message}\nDETAIL:  {detail}" if detail else message)
            if column is not None:  # a value the column's type rejects: name both
                text = repr(values[n][cols.index(column)])
                text = text if len(text) <= 80 else text[:77] + "..."
                error.ingestkit_message = (  # type: ignore[attr-defined]
                    f"table {table}, column {column}: value {text} rejected: {message}"
                )
            culprits.append((rows[n][0], error))
        return culprits

    def _make_loader(self, cur: Any, table: str, cols: tuple[str, ...]) -> _Loader | None:
        """A staging table and a plpgsql loop for rows of ``table (cols)``, made once
        per batch (in the transaction: a rollback forgets them, see _rolled_back)."""
        cur.execute(q("column-types"), {"oid": self._oid(table)})
        types = dict(cur.fetchall())
        if not all(c in types for c in cols):
            return None  # the COPY failed for a column that is not there: bisect
        self._loader_seq += 1
        n = self._loader_seq
        stage = sql.Identifier(f"ingestkit_stage_{n}")
        fields = [sql.Identifier(f"c{i}") for i in range(len(cols))]
        cur.execute(
            sql.SQL("CREATE TEMP TABLE {} (n int, {}) ON COMMIT DELETE ROWS").format(
                stage, sql.SQL(", ").join(sql.SQL("{} text").format(f) for f in fields)
            )
        )
        insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            table_identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(
                sql.SQL("r.{}::{}").format(f, sql.SQL(types[c]))
                for f, c in zip(fields, cols, strict=True)
            ),
        )
        # which column's value its type rejects (a data exception): each cast alone
        probes = sql.SQL("\n").join(
            sql.SQL(
                "IF col IS NULL THEN BEGIN PERFORM r.{}::{}; "
                "EXCEPTION WHEN OTHERS THEN col := {}; END; END IF;"
            ).format(f, sql.SQL(types[c]), sql.Literal(c))
            for f, c in zip(fields, cols, strict=True)
        )
        function = sql.Identifier(f"ingestkit_load_{n}")
        cur.execute(
            sql.SQL(_LOADER).format(
                function=function,
                stage=stage,
                insert=sql.SQL(insert.as_string(cur)),
                probes=sql.SQL(probes.as_string(cur)),
            )
        )
        loader = _Loader(
            copy=sql.SQL("COPY pg_temp.{} FROM STDIN").format(stage).as_string(cur),
            run=sql.SQL("SELECT * FROM pg_temp.{}()").format(function).as_string(cur),
        )
        self._new_loaders[(table, cols)] = loader
        return loader

    def _copy(self, rows: list[Any]) -> None:
        self.wait()
        groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        # Rows of a table go in one COPY per column set; where upserts are involved,
        # a change of column set or kind starts a new segment, so that the order of
        # writes to one table is kept (two statements in order, as SPEC §7 says).
        last: dict[str, tuple[Any, ...]] = {}
        segment: dict[str, int] = {}
        for _owner, group, values in rows:
            table = group[0]
            before = last.get(table)
            if before is not None and before != group and (len(before) > 2 or len(group) > 2):
                segment[table] = segment.get(table, 0) + 1
            last[table] = group
            key = (table, group[1], group[2] if len(group) > 2 else None, segment.get(table, 0))
            groups.setdefault(key, []).append(values)
        with self.conn.cursor() as cur:
            for (table, cols, conflict, _), values in self._in_fk_order(groups):
                target, blank = self._target(table, cols)
                if blank:  # '' into a column that is not of a text type is NULL
                    values = [_blank_to_null(v, blank) for v in values]
                if conflict is None:
                    self._copy_into(cur, table, table_identifier(table), target, values)
                else:
                    self._upsert(cur, table, target, self._map(table, conflict), values)

    def _copy_into(
        self, cur: Any, table: str, into: sql.Composable, cols: tuple[Any, ...], values: list[Any]
    ) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            into, sql.SQL(", ").join(map(sql.Identifier, cols))
        )
        data = copy_rows(values)
        try:
            cur.copy_expert(statement, io.BytesIO(data), size=len(data) + 1)
        except psycopg2.Error as exc:
            _name_the_column(exc, table, cols, values)
            raise

    def _upsert(
        self,
        cur: Any,
        table: str,
        cols: tuple[Any, ...],
        conflict: tuple[Any, ...],
        values: list[Any],
    ) -> None:
        """COPY into a staging table, then ``INSERT ... SELECT ... ON CONFLICT``.

        Two rows with the same conflict key cannot be in one such INSERT ("cannot
        affect row a second time"): a row whose key came earlier in the chunk goes
        into the next round, one INSERT per round, so every row is written (and
        checked) in order, as statements in order would.
        """
        updates = [c for c in cols if c not in conflict]
        where = [cols.index(c) for c in conflict if c in cols]
        rounds, staged = 1, values
        if len(where) == len(conflict) and not _distinct(values, where):
            seen: dict[tuple[Any, ...], int] = {}
            staged = []
            for row in values:
                key = tuple(row[i] for i in where)
                n = 0
                if None not in key:  # NULLs never conflict
                    key = tuple(copy_field(k) for k in key)
                    n = seen[key] = seen.get(key, -1) + 1
                    if n >= rounds:
                        rounds = n + 1
                staged.append((*row, n))
        temp = self._temps.get((table, cols))
        if temp is None:
            temp = self._temps[(table, cols)] = f"ingestkit_upsert_{len(self._temps) + 1}"
        target, staging = table_identifier(table), sql.Identifier(temp)
        columns = sql.SQL(", ").join(map(sql.Identifier, cols))
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {0} AS "
                "SELECT {1}, 0 AS ingestkit_round FROM {2} WITH NO DATA; DELETE FROM {0}"
            ).format(staging, columns, target)
        )
        if rounds > 1:
            self._copy_into(cur, table, staging, (*cols, "ingestkit_round"), staged)
        else:  # one round: the rows as they are, ingestkit_round left NULL
            self._copy_into(cur, table, staging, cols, values)
        action = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates
                )
            )
            if updates
            else sql.SQL("DO NOTHING")
        )
        insert = sql.SQL("INSERT INTO {0} ({1}) SELECT {1} FROM {2}{3} ON CONFLICT ({4}) {5}")
        statements = [
            insert.format(
                target,
                columns,
                staging,
                sql.SQL(" WHERE ingestkit_round = {}").format(sql.Literal(n))
                if rounds > 1
                else sql.SQL(""),
                sql.SQL(", ").join(map(sql.Identifier, conflict)),
                action,
            )
            for n in range(rounds)
        ]
        cur.execute(sql.SQL("; ").join(statements))

    def _target(self, table: str, cols: tuple[str, ...]) -> tuple[tuple[str, ...], list[int]]:
        """The table's columns for row keys ``cols`` (matched case-insensitively when
        not exactly), and the positions of those that are not of a text type."""
        known = self._targets.get((table, cols))
        if known is None:
            columns = self._table_columns(table)
            if columns is None:  # no such table: PostgreSQL says so
                return cols, []
            mapped = self._map(table, cols)
            blank = [i for i, c in enumerate(mapped) if columns.get(c) is False]
            known = self._targets[(table, cols)] = (mapped, blank)
        return known

    def _map(self, table: str, cols: tuple[str, ...]) -> tuple[str, ...]:
        columns = self._table_columns(table)
        if not columns:
            return cols
        mapped = []
        for c in cols:
            if c not in columns:
                folded = [name for name in columns if name.lower() == c.lower()]
                if len(folded) == 1:
                    c = folded[0]
            mapped.append(c)
        return tuple(mapped)

    def _table_columns(self, table: str) -> dict[str, bool] | None:
        if table not in self._columns:
            oid = self._oid(table)
            if oid is None:  # not there (yet): looked for again next time
                del self._table_oids[table]
                return None
            with self.conn.cursor() as cur:
                cur.execute(q("table-columns"), (oid,))
                self._columns[table] = dict(cur.fetchall())
        return self._columns[table]

    def _in_fk_order(self, groups: dict[Any, Any]) -> list[Any]:
        """Groups ordered so that tables referenced by foreign keys come first."""
        tables = list(dict.fromkeys(t for t, *_ in groups))
        if len(tables) < 2:
            return list(groups.items())
        oids = {t: self._oid(t) for t in tables}
        ordered: list[str] = []
        visiting: set[str] = set()

        def visit(table: str) -> None:
            if table in ordered or table in visiting:
                return
            visiting.add(table)
            parents = self._fk_parents.get(oids[table] or 0, set())
            for other in tables:
                if other != table and oids[other] in parents:
                    visit(other)
            ordered.append(table)

        for table in tables:
            visit(table)
        rank = {t: i for i, t in enumerate(ordered)}
        return sorted(groups.items(), key=lambda kv: rank[kv[0][0]])

    def table_oid(self, table: str) -> int | None:
        """The oid of ``table`` (a ``db.insert``/``lookup`` name), None if there is none."""
        return self._oid(table)

    @_critical
    def catalog(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """The rows of a query of the system catalogs (which the items' data cannot
        make fail): no flush, no savepoint."""
        self.wait()
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())

    def _oid(self, table: str) -> int | None:
        if table not in self._table_oids:
            self.wait()
            with self.conn.cursor() as cur:
                cur.execute(q("table-oid"), (table_identifier(table).as_string(cur),))
                oid, wider = cur.fetchone()
                self._table_oids[table] = oid
                if wider or oid is None:
                    self._sees_others.add(table)
                if oid is not None:
                    cur.execute(q("fk-parents"), (oid,))
                    self._fk_parents[oid] = {r[0] for r in cur.fetchall()}
        return self._table_oids[table]

    # -- chunks ------------------------------------------------------------

    def wait(self) -> None:
        """Wait for a chunk committing in the background; raise what it raised.

        A chunk whose bookkeeping failed is rolled back whole here, so that none
        of its writes can ever commit with a later chunk, and the batch is
        aborted: the failure is ingestkit's, never the item's that runs now.
        """
        if self.aborted is not None:
            raise self.aborted
        job = self._job
        if job is None:
            return
        if job.is_alive():
            # an item's --item-timeout does not count the wait for ingestkit's commit
            remaining = signal.setitimer(signal.ITIMER_REAL, 0)[0] if self.timed else 0.0
            job.join()
            if remaining:
                signal.setitimer(signal.ITIMER_REAL, remaining)
        self._job = None
        error, self._job_error = self._job_error, None
        token, self._job_token = self._job_token, None
        if error is None:
            self._committed.append(token)
            return
        self._reset()
        self._rolled_back()
        if isinstance(error, psycopg2.Error) and is_connection_error(self.conn, error):
            self.aborted = ConnectionLost(str(error).strip())
        else:
            with contextlib.suppress(psycopg2.Error):
                self.conn.rollback()
            self.aborted = ChunkLost(_chunk_lost_message(token, error))
        raise self.aborted from error

    def take_committed(self) -> list[Any]:
        """Tokens of the background commits that succeeded since the last call."""
        self.wait()
        done, self._committed = self._committed, []
        return done

    @_critical
    def commit_later(self, writes: list[Callable[[Any], None]], token: Any = None) -> None:
        """Run ``writes`` (each gets a cursor) and commit, in a background thread.

        The next chunk's items run meanwhile; anything that needs the
        connection first waits for this commit (:meth:`wait`). psycopg2 lets
        other threads run while it waits on the server, so the server's work
        on one chunk overlaps the processors' work on the next.
        """
        self.wait()
        self.begin()

        setup, guarded = self.bookkeeping_setup, self._guarded

        def job() -> None:
            try:
                with self.conn.cursor() as cur:
                    if setup:
                        cur.execute(setup)
                    for write in writes:
                        write(cur)
                self._end_chunk(guarded)
            except BaseException as exc:  # handed to the main thread by wait()
                self._job_error = exc

        self._reset()
        self._committing()  # a commit that fails aborts the batch (see wait)
        self._job_token = token
        self._job = threading.Thread(target=job, name="ingestkit-commit", daemon=True)
        self._job.start()

    @_critical
    def claim(self, query: Any, params: Any) -> tuple[Any, ...] | None:
        """Start a chunk by running ``query``, a row-locking ``SELECT``: its row or None.

        The locks it takes (a worker's claim on a task) last until the chunk
        commits: rolling the chunk back for a replay keeps them. With no row,
        no transaction is left open.
        """
        self.wait()
        try:
            with self.conn.cursor() as cur:
                cur.execute(query, params)
                row: tuple[Any, ...] | None = cur.fetchone()
        except psycopg2.Error as exc:
            if is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            raise
        if row is None:
            self.conn.rollback()
            return None
        self._held = True
        self.begin()
        return row

    @_critical
    def release(self) -> None:
        """Give up a claim without committing anything."""
        self.wait()
        self._held = False
        self._reset()
        self._rolled_back()
        if not self.conn.closed:
            self.conn.rollback()

    @_critical
    def begin(self) -> None:
        if not self._in_chunk:
            self._in_chunk = True
            if self.dry_run or self._held:
                self._raw("SAVEPOINT ingestkit_chunk")

    def _end_chunk(self, guarded: bool) -> None:
        if self.dry_run:
            with self.conn.cursor() as cur:
                cur.execute("RELEASE SAVEPOINT ingestkit_chunk")
        else:
            if guarded:
                with self.conn.cursor() as cur:
                    cur.execute(q("allow-commit"))
            self.conn.commit()
            self._held = False

    @_critical
    def commit(self) -> None:
        """Commit the chunk (in a dry run: keep it, to be rolled back at the end)."""
        self.wait()
        self.begin()
        try:
            self._end_chunk(self._guarded)
        except psycopg2.Error as exc:
            if is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            self._rolled_back()
            raise
        self._reset()
        self._committing()

    @_critical
    def rollback(self) -> None:
        """Undo the whole chunk in flight (one committing in the background completes)."""
        self.wait()
        try:
            if (self.dry_run or self._held) and self._in_chunk:
                self._raw(
                    "ROLLBACK TO SAVEPOINT ingestkit_chunk; RELEASE SAVEPOINT ingestkit_chunk"
                )
            elif not self.dry_run and not self._held and not self.conn.closed:
                self.conn.rollback()
        finally:
            self._reset()
            self._guarded = False  # a dry run's guard row may be gone with the chunk
            self._rolled_back()

    def _reset(self) -> None:
        self._rows = []
        self._row_tables = set()
        self._savepoint_owner = _NOBODY
        self._late_failures = []
        self._in_chunk = False
        if not self.dry_run:  # a dry run's one transaction keeps its guard row
            self._guarded = False
        self.owner = None

    def close(self) -> None:
        """End the batch: a dry run rolls back everything it did."""
        with contextlib.suppress(Exception, BatchAborted):  # the batch is over; reported
            self.wait()
        if self.conn.closed:
            return
        try:
            self.conn.rollback()
        finally:
            self.conn.close()
