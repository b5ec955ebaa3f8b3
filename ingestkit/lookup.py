"""The ``lookup`` fixture: cached dimension lookups for a batch.

Values are cached per (table, returning, match); misses are cached too. An
entry that an item creates (``get_or_create``) or reads inside a chunk that is
later rolled back is forgotten with it, so the cache never outlives the rows:
the cache listens to the transaction's commit, rollback and discard events.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from psycopg2 import sql

from .outcomes import LookupMissing
from .queries import q
from .transaction import Listener, Transaction, bare_name, table_identifier

_MISSING = object()
#: (table, returning, ((column, value as text), ...)): one cached answer
CacheKey: TypeAlias = tuple[str, str, tuple[tuple[str, Any], ...]]
_NOTHING: frozenset[str] = frozenset()
#: After this many values of one column of a table were queried, the table is
#: loaded whole when that is exact and small (see Lookup._auto_preload).
AUTO_PRELOAD_AFTER = 32
AUTO_PRELOAD_ROWS = 100_000


def _cache_key(table: str, returning: str, match: dict[str, Any]) -> CacheKey:
    if len(match) == 1:  # the usual lookup: one code column
        ((column, value),) = match.items()
        return (table, returning, ((column, value if type(value) is str else _text(value)),))
    return (table, returning, tuple(sorted((k, _text(v)) for k, v in match.items())))


def _text(value: Any) -> str | None:
    """Match values are cached as text: lookup(id=1) and lookup(id="1") are one entry."""
    return None if value is None else str(value)


class Lookup(Listener):
    """``lookup(table, returning="id", **match)`` -> value; see the fixtures docs."""

    def __init__(self, txn: Transaction) -> None:
        self._txn = txn
        txn.listeners.append(self)  # the cache follows the transaction's commits and rollbacks
        self._cache: dict[CacheKey, Any] = {}
        self._preloaded: set[tuple[str, str, str]] = set()
        self._preloaded_names: set[str] = set()  # their bare table names
        # entries added in the chunk in flight (forgotten if it rolls back), and
        # by owner those that may show the owner's own writes (forgotten if it fails)
        self._journal: list[CacheKey] = []
        self._owned: dict[Any, list[CacheKey]] = {}
        self._misses: dict[str, set[CacheKey]] = {}  # cached misses by bare table name
        self._writers: dict[Any, frozenset[str] | None] = {}  # in this chunk: owner -> tables
        self._creating = False  # get_or_create's own INSERT is under way
        self._queried: dict[tuple[str, str, str], int] = {}  # values queried, per column
        self._decided: set[tuple[str, str, str]] = set()  # loaded whole, or not to be
        self._auto: set[tuple[str, str, str]] = set()  # loaded whole by _auto_preload

    def __call__(self, table: str, returning: str = "id", **match: Any) -> Any:
        if len(match) == 1:  # _value inlined for the usual lookup (3-4 calls a row)
            ((column, wanted),) = match.items()
            key = (table, returning, ((column, wanted if type(wanted) is str else _text(wanted)),))
            value = self._cache.get(key)
            if value is None:
                value = self._fetch(table, returning, match, key)
        else:
            value = self._value(table, returning, match)
        if value is _MISSING:
            raise LookupMissing(table, match)
        return value

    def get(self, table: str, returning: str = "id", **match: Any) -> Any:
        """Like calling the lookup, but ``None`` when there is no row."""
        value = self._value(table, returning, match)
        return None if value is _MISSING else value

    def _value(self, table: str, returning: str, match: dict[str, Any]) -> Any:
        if not match:
            raise TypeError("lookup needs at least one column=value to match")
        key = _cache_key(table, returning, match)
        value = self._cache.get(key)
        if value is None:
            value = self._fetch(table, returning, match, key)
        return value

    def _fetch(self, table: str, returning: str, match: dict[str, Any], key: CacheKey) -> Any:
        if len(match) == 1:
            ((column, wanted),) = match.items()
            probe = (table, column, returning)
            if probe in self._preloaded and (probe not in self._auto or type(wanted) is str):
                self._remember(key, _MISSING)  # a preloaded dimension is complete
                return _MISSING
            if probe not in self._decided:
                queried = self._queried[probe] = self._queried.get(probe, 0) + 1
                if queried >= AUTO_PRELOAD_AFTER and self._auto_preload(probe):
                    return self._value(table, returning, match)  # from the copy now
        statement = sql.SQL("SELECT {} FROM {} WHERE {} LIMIT 2").format(
            sql.Identifier(returning),
            table_identifier(table),
            sql.SQL(" AND ").join(
                sql.SQL("{} IS NULL").format(sql.Identifier(c))
                if v is None
                else sql.SQL("{} = %s").format(sql.Identifier(c))
                for c, v in match.items()
            ),
        )
        params = [v for v in match.values() if v is not None]
        cur = self._txn.execute(statement, params, reads_only=True, reads=table)
        rows = cur.fetchall()
        cur.close()
        value = rows[0][0] if rows else _MISSING
        self._remember(key, value)
        return value

    def _auto_preload(self, probe: tuple[str, str, str]) -> bool:
        """Load the table whole, as ``preload`` does, when that gives the answers the
        queries would: the column is unique by itself and compared as Python compares
        strings (text or varchar, a deterministic collation; only ``str`` values are
        answered from the copy), no row has a NULL ``returning``, the table has at
        most AUTO_PRELOAD_ROWS rows, and nothing in this chunk wrote it (what the
        copy holds is committed: a rollback leaves it true). After that, as after a
        ``preload``, a write to the table makes its misses be asked again."""
        table, column, returning = probe
        name = bare_name(table)
        if any(tables is None or name in tables for tables in self._writers.values()):
            return False  # asked again at the next value
        self._decided.add(probe)
        oid = self._txn.table_oid(table)
        if oid is None:
            return False
        found = self._txn.catalog(q("lookup-preloadable"), {"oid": oid, "column": column})
        if not found or not found[0][0] or found[0][1] > AUTO_PRELOAD_ROWS:
            return False
        statement = sql.SQL("SELECT {0}, {1} FROM {2} WHERE {0} IS NOT NULL LIMIT %s").format(
            sql.Identifier(column), sql.Identifier(returning), table_identifier(table)
        )
        cur = self._txn.execute(statement, (AUTO_PRELOAD_ROWS + 1,), reads_only=True, reads=table)
        rows = cur.fetchall()
        cur.close()
        if len(rows) > AUTO_PRELOAD_ROWS or any(value is None for _, value in rows):
            return False
        for k, value in rows:
            self._cache[_cache_key(table, returning, {column: k})] = value
        self._preloaded.add(probe)
        self._preloaded_names.add(name)
        self._auto.add(probe)
        return True

    def _remember(self, key: CacheKey, value: Any) -> None:
        self._cache[key] = value
        table = bare_name(key[0])
        if value is _MISSING:
            self._misses.setdefault(table, set()).add(key)
        owner = self._txn.owner
        wrote = self._writers.get(owner, ())
        # an entry read before its item wrote that table outlives the item's failure
        self._journal.append(key)
        if wrote is None or table in wrote:
            self._owned.setdefault(owner, []).append(key)

    def get_or_create(
        self,
        table: str,
        returning: str = "id",
        defaults: dict[str, Any] | None = None,
        **match: Any,
    ) -> Any:
        """The row's ``returning`` value, inserting ``match | defaults`` when missing.

        The row belongs to the current item: if the item fails, the row and
        its cached value are both gone.
        """
        value = self.get(table, returning, **match)
        if value is not None:
            return value
        row = {**match, **(defaults or {})}
        insert = sql.SQL("INSERT INTO {} ({}) VALUES ({}) {} RETURNING {}")
        parts = (
            table_identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
        )
        # Another run or worker may be creating the same row right now: its
        # unique constraint makes this wait, then do nothing, and the row is read.
        returns = sql.Identifier(returning)
        statement = insert.format(*parts, sql.SQL("ON CONFLICT DO NOTHING"), returns)
        self._creating = True  # its own row is all it writes: other cached entries stay true
        try:
            cur = self._txn.execute(statement, list(row.values()))
        finally:
            self._creating = False
        created = cur.fetchone()
        cur.close()
        if created is None:
            key = _cache_key(table, returning, match)
            self._cache.pop(key, None)  # the miss cached a moment ago is out of date
            value = self._fetch(table, returning, match, key)
            if value is not _MISSING:
                return value
            # the conflict was on another column: let the plain INSERT say which
            statement = insert.format(*parts, sql.SQL(""), returns)
            cur = self._txn.execute(statement, list(row.values()))
            created = cur.fetchone()
            cur.close()
        value = created[0]
        self._remember(_cache_key(table, returning, match), value)
        return value

    def preload(self, table: str, key: str, returning: str = "id") -> int:
        """Load a whole dimension ``key -> returning`` in one query; return its size."""
        statement = sql.SQL("SELECT {}, {} FROM {}").format(
            sql.Identifier(key), sql.Identifier(returning), table_identifier(table)
        )
        cur = self._txn.execute(statement, reads_only=True, reads=table)
        rows = cur.fetchall()
        cur.close()
        for k, v in rows:
            self._cache[_cache_key(table, returning, {key: k})] = v
        self._preloaded.add((table, key, returning))
        self._preloaded_names.add(bare_name(table))
        return len(rows)

    # -- transaction events (see Transaction.listeners) ----------------------

    def on_discard(self, owner: Any) -> None:
        """``owner`` failed: drop every entry it added (it may have seen its own rows)."""
        for key in self._owned.pop(owner, ()):
            self._cache.pop(key, None)

    def on_write(self, owner: Any, tables: set[str] | None) -> None:
        """``owner`` writes ``tables`` (None: perhaps any): cached misses of them are over."""
        if tables is None:
            self._writers[owner] = None
            if self._creating:
                return
            for name in list(self._misses):
                self._forget_misses(name)
            self._preloaded.clear()  # no written dimension is known complete any more
            self._preloaded_names.clear()
            return
        wrote = self._writers.get(owner, _NOTHING)
        for table in tables:
            name = bare_name(table)
            if wrote is not None and name not in wrote:
                wrote = self._writers[owner] = wrote | {name}
            if self._creating:
                continue  # its own row is all it writes: other cached entries stay true
            if name in self._misses:
                self._forget_misses(name)
            if name in self._preloaded_names:  # no longer known complete
                self._preloaded = {p for p in self._preloaded if bare_name(p[0]) != name}
                self._preloaded_names.discard(name)

    def _forget_misses(self, name: str) -> None:
        for key in self._misses.pop(name, ()):
            if self._cache.get(key) is _MISSING:
                del self._cache[key]

    def on_commit(self) -> None:
        self._journal.clear()
        self._owned.clear()
        self._writers.clear()

    def on_rollback(self) -> None:
        for key in self._journal:
            self._cache.pop(key, None)
        self._journal.clear()
        self._owned.clear()
        self._writers.clear()
