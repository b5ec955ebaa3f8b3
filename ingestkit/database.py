"""The ``db`` handle processors use, and finding and opening the target database."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from .copy import NATIVE, adapt_row
from .outcomes import UsageError
from .transaction import Transaction, table_identifier

psycopg2.extras.register_uuid()

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
            return cur.rowcount
        finally:
            cur.close()

    def query(self, query: str | sql.Composable, params: Any = None) -> list[dict]:
        """Run a query; return its rows as dicts."""
        cur = self._txn.execute(query, params)
        try:
            if cur.description is None:
                return []
            names = [c.name for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            cur.close()

    def query_one(self, query: str | sql.Composable, params: Any = None) -> dict | None:
        """The first row of a query as a dict, or None."""
        rows = self.query(query, params)
        return rows[0] if rows else None

    def insert(self, table: str, row_or_rows: dict | Sequence[dict]) -> None:
        """Insert one row (a dict) or many; written with COPY at chunk end.

        Before any ``execute``/``query`` the buffer is written, so the item
        reads its own rows. A constraint violation fails the item that wrote
        the offending row.
        """
        if table not in self._tables:
            table_identifier(table)  # reject a bad name now, where the caller is
            self._tables.add(table)
        # values COPY does not write natively go through psycopg2's adapters (copy.py)
        native = NATIVE.issuperset
        if isinstance(row_or_rows, dict):
            row = row_or_rows
            if not native(map(type, row.values())):
                row = adapt_row(row, self._mogrify, self._evaluate, table)
            rows = [row]
        else:
            rows = [
                r
                if not isinstance(r, dict) or native(map(type, r.values()))
                else adapt_row(r, self._mogrify, self._evaluate, table)
                for r in row_or_rows
            ]
        self._txn.insert(self._txn.owner, table, rows)

    def _mogrify(self, value: Any) -> bytes:
        with self._txn.conn.cursor() as cur:
            return cur.mogrify("%s", (value,))

    def _evaluate(self, value: Any) -> str | None:
        cur = self._txn.execute("SELECT (%s)::text", (value,), reads_only=True)
        try:
            return cur.fetchone()[0]
        finally:
            cur.close()

    def upsert(self, table: str, row: dict, conflict: Sequence[str] = ("id",)) -> None:
        """``INSERT ... ON CONFLICT (conflict) DO UPDATE`` the other columns."""
        if isinstance(conflict, str):
            conflict = (conflict,)
        cols = list(row)
        updates = [c for c in cols if c not in conflict]
        action = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates
                )
            )
            if updates
            else sql.SQL("DO NOTHING")
        )
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
            table_identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
            sql.SQL(", ").join(map(sql.Identifier, conflict)),
            action,
        )
        self.execute(statement, [_adapt(v) for v in row.values()])

    @property
    def connection(self) -> Any:
        """The raw psycopg2 connection (escape hatch). Writes through it inside an
        item are still undone if the item fails."""
        return self._txn.connection_for(self._txn.owner)


def _adapt(value: Any) -> Any:
    if isinstance(value, dict):
        return psycopg2.extras.Json(value)
    return value


# -- finding the database ----------------------------------------------------

_PASSWORD_IN_URI = re.compile(r"(?P<pre>://[^:/@\s]*:)(?P<pw>[^@\s]*)@")
_PASSWORD_KV = re.compile(r"(?P<pre>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)")


def dsn_password(dsn: str) -> str | None:
    try:
        return psycopg2.extensions.parse_dsn(dsn).get("password") or None
    except psycopg2.ProgrammingError:
        match = _PASSWORD_IN_URI.search(dsn) or _PASSWORD_KV.search(dsn)
        return match.group("pw") if match else None


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***``."""
    dsn = _PASSWORD_IN_URI.sub(
        lambda m: m.group("pre") + ("***" if m.group("pw") else "") + "@", dsn
    )
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


def connect(dsn: str, application_name: str = "ingestkit", options: str | None = None) -> Any:
    """Open a connection, or raise UsageError with one line naming the problem."""
    extra = {"options": options} if options else {}
    try:
        conn = psycopg2.connect(dsn, application_name=application_name, connect_timeout=10, **extra)
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        password = dsn_password(dsn)
        if password:
            first = first.replace(password, "***")
        raise UsageError(f"cannot connect to {mask_dsn(dsn)}: {first}") from None
    return conn
