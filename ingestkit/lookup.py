"""The ``lookup`` fixture: cached dimension lookups for a batch.

Values are cached per (table, returning, match); misses are cached too. An
entry that an item creates (``get_or_create``) or reads inside a chunk that is
later rolled back is forgotten with it, so the cache never outlives the rows:
the cache listens to the transaction's commit, rollback and discard events.
"""

from __future__ import annotations

from typing import Any

from psycopg2 import sql

from .outcomes import LookupMissing
from .queries import q
from .transaction import Listener, Transaction, bare_name, table_identifier

_MISSING = object()
_NOTHING: frozenset[str] = frozenset()
#: After this many values of one column of a table were queried, the table is
#: loaded whole when that is exact and small (see Lookup._auto_preload).
AUTO_PRELOAD_AFTER = 32
AUTO_PRELOAD_ROWS = 100_000


def _cache_key(table: str, returning: str, match: dict) -> tuple:
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
        self._cache: dict[tuple, Any] = {}
        self._preloaded: set[tuple[str, str, str]] = set()
        self._preloaded_names: set[str] = set()  # their bare table names
        # entries added in the chunk in flight, with the item whose own writes
        # they may show (None: they show only what others wrote)
        self._journal: list[tuple[tuple, Any]] = []
        self._misses: dict[str, set[tuple]] = {}  # cached misses by bare table name
        self._writers: dict[Any, set[str] | None] = {}  # in this chunk: owner -> tables
        #: in this chunk: owner -> tables (as named) whose writes were taken into account
        self._settled: dict[Any, frozenset[str]] = {}
        self._creating = False  # get_or_create's own INSERT is under way
        self._queried: dict[tuple[str, str, str], int] = {}  # values queried, per column
        self._decided: set[tuple[str, str, str]] = set()  # loaded whole, or not to be
        self._auto: set[tuple[str, str, str]] = set()  # loaded whole by _auto_preload

    def __call__(self, table: str, returning: str = "id", **match: Any) -> Any:
        value = self._value(table, returning, match)
        if value is _MISSING:
            raise LookupMissing(table, match)
        return value

    def get(self, table: str, returning: str = "id", **match: Any) -> Any:
        """Like calling the lookup, but ``None`` when there is no row."""
        value = self._value(table, returning, match)
        return None if value is _MISSING else value

    def _value(self, table: str, returning: str, match: dict) -> Any:
        if not match:
            raise TypeError("lookup needs at least one column=value to match")
        key = _cache_key(table, returning, match)
        value = self._cache.get(key)
        if value is None:
            value = self._fetch(table, returning, match, key)
        return value

    def _fetch(self, table: str, returning: str, match: dict, key: tuple) -> Any:
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

    def _remember(self, key: tuple, value: Any) -> None:
        self._cache[key] = value
        table = bare_name(key[0])
        if value is _MISSING:
            self._misses.setdefault(table, set()).add(key)
        owner = self._txn.owner
        wrote = self._writers.get(owner, ())
        # an entry read before its item wrote that table outlives the item's failure
        self._journal.append((key, owner if wrote is None or table in wrote else None))

    def get_or_create(
        self, table: str, returning: str = "id", defaults: dict | None = None, **match: Any
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
        keep = []
        for entry in self._journal:
            if entry[1] is owner:
                self._cache.pop(entry[0], None)
            else:
                keep.append(entry)
        self._journal = keep

    def on_write(self, owner: Any, tables: set[str] | None) -> None:
        """``owner`` writes ``tables`` (None: perhaps any): cached misses of them are over."""
        if (
            tables is not None
            and tables <= self._settled.get(owner, _NOTHING)
            and not any(
                bare_name(t) in self._misses or bare_name(t) in self._preloaded_names
                for t in tables
            )
        ):
            # the usual db.insert of an item that wrote this table before: what
            # its first write invalidated is still gone, and nothing came back since
            return
        wrote = self._writers.get(owner, set())
        bare = set() if tables is None else {bare_name(t) for t in tables}
        if tables is None or wrote is None:
            self._writers[owner] = None
        elif not bare <= wrote:
            self._writers[owner] = wrote | bare
        if self._creating:
            return  # its own row is all it writes: other cached entries stay true
        if tables is not None:
            self._settled[owner] = self._settled.get(owner, _NOTHING) | tables
        if not (self._misses or self._preloaded):
            return
        names = list(self._misses) if tables is None else [n for n in bare if n in self._misses]
        for name in names:
            for key in self._misses.pop(name, ()):
                if self._cache.get(key) is _MISSING:
                    del self._cache[key]
        if self._preloaded and (tables is None or bare & self._preloaded_names):
            # a written dimension is no longer known complete
            self._preloaded = {
                p for p in self._preloaded if tables is not None and bare_name(p[0]) not in bare
            }
            self._preloaded_names = {bare_name(p[0]) for p in self._preloaded}

    def on_commit(self) -> None:
        self._journal.clear()
        self._writers.clear()
        self._settled.clear()

    def on_rollback(self) -> None:
        for key, _who in self._journal:
            self._cache.pop(key, None)
        self._journal.clear()
        self._writers.clear()
        self._settled.clear()
