"""The ``db`` handle processors use, and finding and opening the target database."""

from __future__ import annotations

import dataclasses
import operator
import os
import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from .copy import NATIVE, adapt_row
from .outcomes import UsageError
from .queries import q
from .transaction import Transaction, table_identifier

psycopg2.extras.register_uuid()  # type: ignore[no-untyped-call]  # untyped in types-psycopg2

if TYPE_CHECKING:
    from .config import Config


class Database:
    """The ``db`` fixture: the run's database handle.

    Whatever it writes while an item runs belongs to that item: it commits
    with the item's outcome, or is rolled back with it.
    """

    def __init__(self, txn: Transaction) -> None:
        self._txn = txn
        self._tables: set[str] = set()

    def execute(self, query: str | sql.Composable, params: Any = None) -> int:
        """Run a statement; return the number of rows it affected."""
        cur = self._txn.execute(query, params)
        try:
            rowcount: int = cur.rowcount
            return rowcount
        finally:
            cur.close()

    def query(self, query: str | sql.Composable, params: Any = None) -> list[dict[str, Any]]:
        """Run a query; return its rows as dicts."""
        cur = self._txn.execute(query, params)
        try:
            if cur.description is None:
                return []
            names = [c.name for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            cur.close()

    def query_one(
        self, query: str | sql.Composable, params: Any = None
    ) -> dict[str, Any] | None:
        """The first row of a query as a dict, or None."""
        rows = self.query(query, params)
        return rows[0] if rows else None

    def insert(self, table: str, row_or_rows: Any) -> None:
        """Insert one row or many; written with COPY at chunk end.

        A row is a dict, a dataclass or a pydantic model instance (its fields,
        by field name). A key that matches no column exactly but exactly one
        case-insensitively goes to that column; a ``str`` for a column that is
        not of a text type is parsed by PostgreSQL, ``''`` is NULL. Before any
        ``execute``/``query`` the buffer is written, so the item reads its own
        rows. A rejected row fails the item that wrote it.
        """
        self._check(table)
        self._txn.insert(self._txn.owner, table, self._split(table, row_or_rows, "insert"))

    def upsert(self, table: str, row_or_rows: Any, conflict: Sequence[str] = ("id",)) -> None:
        """``INSERT ... ON CONFLICT (conflict) DO UPDATE`` the other columns.

        Rows are as for :meth:`insert`, and buffered as its rows are (a COPY into
        a staging table and one ``INSERT ... SELECT`` per table and chunk). Two
        rows with the same conflict key end as two statements in order would.
        """
        self._check(table)
        if isinstance(conflict, str):
            conflict = (conflict,)
        rows = self._split(table, row_or_rows, "upsert")
        self._txn.upsert(self._txn.owner, table, rows, tuple(conflict))

    def _check(self, table: str) -> None:
        if table not in self._tables:
            table_identifier(table)  # reject a bad name now, where the caller is
            self._tables.add(table)

    def _split(self, table: str, row_or_rows: Any, verb: str) -> list[Row]:
        """One row or many as (columns, values); values COPY does not write
        natively go through psycopg2's adapters (copy.py)."""
        one = type(row_or_rows) is dict or _is_object(row_or_rows)
        rows = [_split(row_or_rows, verb)] if one else [_split(r, verb) for r in row_or_rows]
        native = NATIVE.issuperset
        return [
            row
            if native(map(type, row[1]))
            else _adapted(row, self._mogrify, self._evaluate, table)
            for row in rows
        ]

    def _mogrify(self, value: Any) -> bytes:
        with self._txn.conn.cursor() as cur:
            mogrified: bytes = cur.mogrify("%s", (value,))
            return mogrified

    def _evaluate(self, value: Any) -> str | None:
        cur = self._txn.execute("SELECT (%s)::text", (value,), reads_only=True)
        try:
            text: str | None = cur.fetchone()[0]
            return text
        finally:
            cur.close()

    @property
    def connection(self) -> Any:
        """The raw psycopg2 connection (escape hatch). Writes through it inside an
        item are still undone if the item fails."""
        return self._txn.connection_for(self._txn.owner)


#: A buffered row: its columns and their values.
Row = tuple[tuple[str, ...], tuple[Any, ...]]

#: Per dataclass: its columns (the field names) and a getter of their values.
_GETTERS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


def _split(row: Any, verb: str) -> Row:
    """A dict, dataclass or pydantic instance as (columns, values), by field name
    (a field's ``metadata={"column": ...}`` or alias names the column it is
    *read* from, not written to)."""
    kind = type(row)
    if kind is not dict:
        getter = _GETTERS.get(kind) or _dataclass_getter(kind)
        if getter is not None:
            columns, values = getter[0], getter[1](row)
            if not columns:
                raise ValueError(f"db.{verb} got an empty row")
            return columns, values
        if hasattr(kind, "model_fields") and hasattr(row, "model_dump"):
            row = row.model_dump()
        elif not isinstance(row, dict):
            raise TypeError(f"db.{verb} takes a dict or a list of dicts, got {kind.__name__}")
    if not row:
        raise ValueError(f"db.{verb} got an empty row")
    return tuple(row), tuple(row.values())


def _dataclass_getter(
    kind: type,
) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]] | None:
    if not dataclasses.is_dataclass(kind):
        return None
    names = tuple(f.name for f in dataclasses.fields(kind))
    if len(names) > 1:
        getter: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(*names)
    else:  # attrgetter of one name gives the value, of none is an error
        getter = lambda value: tuple(getattr(value, n) for n in names)  # noqa: E731
    made = _GETTERS[kind] = (names, getter)
    return made


def _adapted(
    row: Row, mogrify: Callable[[Any], bytes], evaluate: Callable[[Any], str | None], table: str
) -> Row:
    adapted = adapt_row(dict(zip(row[0], row[1], strict=True)), mogrify, evaluate, table)
    return row[0], tuple(adapted.values())


def _is_object(value: Any) -> bool:
    kind = type(value)
    return kind in _GETTERS or dataclasses.is_dataclass(kind) or hasattr(kind, "model_fields")


# -- finding the database ----------------------------------------------------

_PASSWORD_IN_URI = re.compile(r"(?P<pre>://[^:/@\s]*:)(?P<pw>[^@\s]*)@")
_PASSWORD_KV = re.compile(r"(?P<pre>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)")
_PASSWORD_IN_QUERY = re.compile(r"(?P<pre>[?&]password=)(?P<pw>[^&#\s]*)")


def dsn_password(dsn: str) -> str | None:
    """The password of ``dsn``, decoded as libpq reads it, or None."""
    try:
        return psycopg2.extensions.parse_dsn(dsn).get("password") or None
    except psycopg2.ProgrammingError:
        match = _PASSWORD_IN_URI.search(dsn) or _PASSWORD_KV.search(dsn)
        return match.group("pw") if match else None


def dsn_secrets(dsn: str) -> list[str]:
    """Every form of ``dsn``'s password that output could show, longest first.

    The decoded password, and each form as written in the DSN: percent-encoded
    in a URI (``p%40ss``), quoted or with backslash escapes in ``key=value``.
    Masking only one of them leaks the other.
    """
    found = {dsn_password(dsn) or ""}
    for pattern in (_PASSWORD_IN_URI, _PASSWORD_KV, _PASSWORD_IN_QUERY):
        for match in pattern.finditer(dsn):
            raw = match.group("pw")
            found.add(raw)
            if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
                found.add(raw[1:-1])  # the quoted form, without its quotes
                found.add(re.sub(r"\\(.)", r"\1", raw[1:-1]))
            found.add(urllib.parse.unquote(raw))
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***``."""
    dsn = _PASSWORD_IN_URI.sub(
        lambda m: m.group("pre") + ("***" if m.group("pw") else "") + "@", dsn
    )
    dsn = _PASSWORD_IN_QUERY.sub(lambda m: m.group("pre") + "***", dsn)
    return _PASSWORD_KV.sub(lambda m: m.group("pre") + "***", dsn)


def resolve_dsn(config: Config) -> tuple[str, str]:
    """Return ``(dsn, where it came from)``; may start the embedded server."""
    for dsn, origin in (
        (config.getoption("dsn"), "--dsn"),
        (os.environ.get("INGESTKIT_DSN"), "INGESTKIT_DSN"),
        (os.environ.get("DATABASE_URL"), "DATABASE_URL"),
        (config.inicfg.get("dsn"), f"dsn in {config.inipath.name if config.inipath else 'config'}"),
    ):
        if dsn:
            return dsn, origin
    from .embedded import start_embedded

    return start_embedded(config.ensure_cache_dir()), "embedded"


#: How long a TCP peer may stay silent before this side drops the connection:
#: keepalive probes after 10 s idle, 3 of them 5 s apart; data unacknowledged
#: for 25 s (``tcp_user_timeout``, which covers a reply in flight, where
#: keepalives never start and the kernel would retry for ~15 minutes).
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
TCP_USER_TIMEOUT_MS = 25000


def _tcp_parameters(dsn: str) -> dict[str, str]:
    """The client's TCP lease, for the parameters the DSN does not set itself."""
    try:
        given = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return {}  # psycopg2.connect names the problem
    wanted = dict(KEEPALIVES)
    if psycopg2.extensions.libpq_version() >= 120000:
        wanted["tcp_user_timeout"] = str(TCP_USER_TIMEOUT_MS)
    return {name: value for name, value in wanted.items() if name not in given}


def connect(
    dsn: str, application_name: str = "ingestkit", options: str | None = None
) -> psycopg2.extensions.connection:
    """Open a connection, or raise UsageError with one line naming the problem.

    Both ends of a TCP connection drop it when the other stops answering
    (:data:`KEEPALIVES`, :data:`TCP_USER_TIMEOUT_MS`): a lock held by a
    connection to a vanished machine is freed, and no ingestkit process waits
    forever on a server it can no longer reach.
    """
    conn: psycopg2.extensions.connection | None = None
    try:
        # psycopg2 leaves out a keyword that is None (no options: the server's own)
        settings: dict[str, Any] = {
            "application_name": application_name,
            "connect_timeout": 10,
            "options": options or None,
            **_tcp_parameters(dsn),
        }
        conn = psycopg2.connect(dsn, **settings)
        _server_side_lease(conn)
    except psycopg2.Error as exc:
        if conn is not None:
            conn.close()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        for secret in dsn_secrets(dsn):
            first = first.replace(secret, "***")
        raise UsageError(f"cannot connect to {mask_dsn(dsn)}: {first}") from None
    return conn


def _server_side_lease(conn: Any) -> None:
    """The server's side of the TCP lease (ignored on a Unix socket)."""
    with conn.cursor() as cur:
        cur.execute(q("tcp-lease"))
        if conn.server_version >= 120000:
            cur.execute(q("tcp-lease-12"), (TCP_USER_TIMEOUT_MS,))
    conn.commit()


#: What to do about each "insufficient resources" error (SQLSTATE class 53).
_RESOURCE_FIXES = {
    "53100": "the database server's disk is full",
    "53200": "the database server ran out of memory",
    "53300": "the database server has too many connections",
}


def resource_problem(exc: BaseException) -> str | None:
    """One line for a server out of disk, memory or connections (class 53); else None.

    Such an error is no item's fault: the batch stops, and a rerun once the
    server has room again resumes where it stopped.
    """
    code = getattr(exc, "pgcode", None) or ""
    if not code.startswith("53"):
        return None
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    what = _RESOURCE_FIXES.get(code, "the database server ran out of a resource")
    fix = {
        "53100": "free space on its disk (or move tables to another tablespace)",
        "53300": "close other sessions or raise max_connections",
    }.get(code, "give it more")
    return f"{what} ({first}): {fix}, then run ingestkit again"


def check_temp(conn: psycopg2.extensions.connection) -> None:
    """A role that may not create temporary tables cannot record outcomes: say so now."""
    with conn.cursor() as cur:
        cur.execute(q("can-create-temp"))
        row = cur.fetchone()
        assert row is not None  # the query always returns one row
        allowed, role, database = row
    conn.commit()
    if not allowed:
        ident = psycopg2.extensions.quote_ident
        raise UsageError(
            f"role {role} may not create temporary tables in database {database}, which "
            f"ingestkit needs to record outcomes: GRANT TEMP ON DATABASE {ident(database, conn)} "
            f"TO {ident(role, conn)}"
        )
