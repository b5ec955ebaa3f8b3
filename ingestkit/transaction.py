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
import functools
import io
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .copy import copy_rows
from .queries import q

_ITEM_SP = "ingestkit_item"
_NOBODY = object()


class ConnectionLost(Exception):
    """The database connection went away; the chunk in flight is lost."""


class ReplayChunk(Exception):
    """A flush failure cannot be undone item by item: replay the chunk isolated."""

    def __init__(self, culprits: list[tuple[Any, BaseException]]) -> None:
        super().__init__("replay")
        self.culprits = culprits


def _critical(method: Callable) -> Callable:
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
    return query


def table_identifier(name: str) -> sql.Composable:
    """``"schema.table"`` or ``"table"`` as a quoted identifier."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"not a table name: {name!r}")
    return sql.Identifier(*parts)


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


class Transaction:
    """The write connection of a batch, and what is pending in its transaction."""

    def __init__(self, conn: Any, dry_run: bool = False) -> None:
        self.conn = conn
        self.dry_run = dry_run
        self.owner: Any = None  # the item running now, or None
        self._savepoint_owner: Any = _NOBODY
        self._rows: list[tuple[Any, tuple[str, tuple[str, ...]], tuple]] = []
        self._table_oids: dict[str, int | None] = {}
        self._fk_parents: dict[int, set[int]] = {}
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
    def execute(self, query: Any, params: Any = None, reads_only: bool = False) -> Any:
        """Run one statement for the current owner; returns the cursor.

        ``reads_only`` statements (lookups) do not make the owner one whose
        writes need a replay to undo.
        """
        self.wait()
        owner = self.owner
        cur = self.conn.cursor()
        # Client-side problems (a parameter too few, a NUL in a string) raise
        # here, before anything reaches the server or the savepoints change.
        statement = (
            cur.mogrify(_with_params(query, cur), params)
            if params is not None
            else _as_bytes(query, cur)
        )
        prefix = self._prepare(owner)
        try:
            cur.execute(prefix + statement if prefix else statement)
        except psycopg2.Error as exc:
            if is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            if prefix and exc.pgcode != "3B001":  # the savepoint ran; the statement failed
                self._savepoint_owner = owner
            if owner is None:
                # sources and wider fixtures: keep the transaction usable
                self._rollback_to_savepoint()
            elif owner.statement_error is None:  # the first error is the cause
                owner.statement_error = exc
            raise
        if prefix:
            self._savepoint_owner = owner
        if owner is not None and not reads_only:
            owner.has_statements = True
        return cur

    @_critical
    def connection_for(self, owner: Any) -> Any:
        """The raw connection, after making ``owner``'s writes through it undoable.

        The transaction is ingestkit's: a processor that commits or rolls back
        on it fails (see :meth:`transaction_ended`).
        """
        if owner is not None:
            self.execute("SELECT 1")
        self.wait()
        return self.conn

    @_critical
    def transaction_ended(self) -> bool:
        """True if something (a raw ``COMMIT``) ended the chunk's transaction."""
        self.wait()
        idle = self.conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        ended = self._in_chunk and idle and self._savepoint_owner is not _NOBODY
        if ended:
            self._savepoint_owner = _NOBODY
            self._in_chunk = False
            self.conn.rollback()  # psycopg2 still thinks a transaction is open: resync it
        return ended

    def _prepare(self, owner: Any) -> bytes:
        """Flush what must be visible and return the savepoint prefix for ``owner``.

        Other owners' rows are written first, outside ``owner``'s savepoint, so
        that rolling back to it undoes only ``owner``'s work. The caller sends
        the prefix with its statement and then records the new savepoint owner.
        """
        self.begin()
        if any(row[0] is not owner for row in self._rows):
            self._flush_others(owner)
        prefix = b""
        if self._savepoint_owner is not owner:
            release = "" if self._savepoint_owner is _NOBODY else f"RELEASE SAVEPOINT {_ITEM_SP}; "
            prefix = f"{release}SAVEPOINT {_ITEM_SP}; ".encode()
        if self._rows:  # owner's own buffered rows go in under its savepoint
            if prefix:
                self._raw(prefix.decode()[:-2])
                self._savepoint_owner = owner
                prefix = b""
            self._flush_own(owner)
        return prefix

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

    def insert(self, owner: Any, table: str, rows: Sequence[dict]) -> None:
        for row in rows:
            if not isinstance(row, dict):
                raise TypeError(
                    f"db.insert takes a dict or a list of dicts, got {type(row).__name__}"
                )
            if not row:
                raise ValueError("db.insert got an empty row")
            cols = tuple(row)
            self._rows.append((owner, (table, cols), tuple(row.values())))

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

    def _flush_own(self, owner: Any) -> None:
        """Write ``owner``'s rows: a failure is its own (raised into the item)."""
        rows, self._rows = self._rows, []
        try:
            self._copy(rows)
        except (psycopg2.Error, UnicodeEncodeError) as exc:
            if isinstance(exc, psycopg2.Error) and is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            if owner is not None and owner.statement_error is None:
                owner.statement_error = exc
            raise

    def _flush_others(self, keep: Any) -> list[tuple[Any, BaseException]]:
        """Write other owners' rows; pin failures on them and return those."""
        mine = [r for r in self._rows if r[0] is keep]
        others = [r for r in self._rows if r[0] is not keep]
        self._rows = mine
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

    def _flush_protected(self, rows: list) -> list[tuple[Any, BaseException]]:
        if not rows:
            return []
        self._raw("SAVEPOINT ingestkit_flush")
        try:
            self._copy(rows)
            if self.deferred_check():
                with self.conn.cursor() as cur:
                    cur.execute(self.deferred_check())
        except (psycopg2.Error, UnicodeEncodeError) as exc:
            if isinstance(exc, psycopg2.Error) and is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            self._raw("ROLLBACK TO SAVEPOINT ingestkit_flush; RELEASE SAVEPOINT ingestkit_flush")
            owners = list(dict.fromkeys(r[0] for r in rows))
            if len(owners) == 1:
                return [(owners[0], exc)]
            half = set(owners[: len(owners) // 2])
            first = [r for r in rows if r[0] in half]
            second = [r for r in rows if r[0] not in half]
            return self._flush_protected(first) + self._flush_protected(second)
        self._raw("RELEASE SAVEPOINT ingestkit_flush")
        return []

    def _copy(self, rows: list) -> None:
        self.wait()
        groups: dict[tuple[str, tuple[str, ...]], list[tuple]] = {}
        for _owner, group, values in rows:
            groups.setdefault(group, []).append(values)
        with self.conn.cursor() as cur:
            for (table, cols), values in self._in_fk_order(groups):
                statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    table_identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols))
                )
                data = copy_rows(values)
                cur.copy_expert(statement, io.BytesIO(data), size=len(data) + 1)

    def _in_fk_order(self, groups: dict) -> list:
        """Groups ordered so that tables referenced by foreign keys come first."""
        tables = list(dict.fromkeys(t for t, _ in groups))
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

    def _oid(self, table: str) -> int | None:
        if table not in self._table_oids:
            self.wait()
            with self.conn.cursor() as cur:
                cur.execute(q("table-oid"), (table_identifier(table).as_string(cur),))
                oid = cur.fetchone()[0]
                self._table_oids[table] = oid
                if oid is not None:
                    cur.execute(q("fk-parents"), (oid,))
                    self._fk_parents[oid] = {r[0] for r in cur.fetchall()}
        return self._table_oids[table]

    # -- chunks ------------------------------------------------------------

    def wait(self) -> None:
        """Wait for a chunk committing in the background; raise what it raised."""
        job = self._job
        if job is None:
            return
        job.join()
        self._job = None
        error, self._job_error = self._job_error, None
        token, self._job_token = self._job_token, None
        if error is None:
            self._committed.append(token)
        else:
            if isinstance(error, psycopg2.Error) and is_connection_error(self.conn, error):
                raise ConnectionLost(str(error).strip()) from error
            raise error

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

        def job() -> None:
            try:
                with self.conn.cursor() as cur:
                    for write in writes:
                        write(cur)
                self._end_chunk()
            except BaseException as exc:  # handed to the main thread by wait()
                self._job_error = exc

        self._reset()
        self._job_token = token
        self._job = threading.Thread(target=job, name="ingestkit-commit", daemon=True)
        self._job.start()

    @_critical
    def claim(self, query: Any, params: Any) -> tuple | None:
        """Start a chunk by running ``query``, a row-locking ``SELECT``: its row or None.

        The locks it takes (a worker's claim on a task) last until the chunk
        commits: rolling the chunk back for a replay keeps them. With no row,
        no transaction is left open.
        """
        self.wait()
        try:
            with self.conn.cursor() as cur:
                cur.execute(query, params)
                row = cur.fetchone()
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
        if not self.conn.closed:
            self.conn.rollback()

    @_critical
    def begin(self) -> None:
        if not self._in_chunk:
            self._in_chunk = True
            if self.dry_run or self._held:
                self._raw("SAVEPOINT ingestkit_chunk")

    def _end_chunk(self) -> None:
        if self.dry_run:
            with self.conn.cursor() as cur:
                cur.execute("RELEASE SAVEPOINT ingestkit_chunk")
        else:
            self.conn.commit()
            self._held = False

    @_critical
    def commit(self) -> None:
        """Commit the chunk (in a dry run: keep it, to be rolled back at the end)."""
        self.wait()
        self.begin()
        try:
            self._end_chunk()
        except psycopg2.Error as exc:
            if is_connection_error(self.conn, exc):
                raise ConnectionLost(str(exc).strip()) from exc
            raise
        self._reset()

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

    def _reset(self) -> None:
        self._rows = []
        self._savepoint_owner = _NOBODY
        self._late_failures = []
        self._in_chunk = False
        self.owner = None

    def close(self) -> None:
        """End the batch: a dry run rolls back everything it did."""
        with contextlib.suppress(Exception):  # the batch is over; its error was reported
            self.wait()
        if self.conn.closed:
            return
        try:
            self.conn.rollback()
        finally:
            self.conn.close()
