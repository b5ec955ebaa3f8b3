"""The ``lookup`` fixture: cached dimension lookups for a batch.

Values are cached per (table, returning, match); misses are cached too. An
entry that an item creates (``get_or_create``) or reads inside a chunk that is
later rolled back is forgotten with it, so the cache never outlives the rows.
"""

from __future__ import annotations

from typing import Any

from psycopg2 import sql

from .outcomes import LookupMissing
from .transaction import Transaction, table_identifier

_MISSING = object()


def _cache_key(table: str, returning: str, match: dict) -> tuple:
    if len(match) == 1:  # the usual lookup: one code column
        ((column, value),) = match.items()
        return (table, returning, ((column, value if type(value) is str else _text(value)),))
    return (table, returning, tuple(sorted((k, _text(v)) for k, v in match.items())))


def _text(value: Any) -> str | None:
    """Match values are cached as text: lookup(id=1) and lookup(id="1") are one entry."""
    return None if value is None else str(value)


class Lookup:
    """``lookup(table, returning="id", **match)`` -> value; see the fixtures docs."""

    def __init__(self, txn: Transaction) -> None:
        self._txn = txn
        self._cache: dict[tuple, Any] = {}
        self._preloaded: set[tuple[str, str, str]] = set()
        # entries added in the chunk in flight, with the item that added them
        self._journal: list[tuple[tuple, Any]] = []

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
            (column,) = match
            if (table, column, returning) in self._preloaded:
                self._remember(key, _MISSING)  # a preloaded dimension is complete
                return _MISSING
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
        cur = self._txn.execute(statement, params, reads_only=True)
        rows = cur.fetchall()
        cur.close()
        value = rows[0][0] if rows else _MISSING
        self._remember(key, value)
        return value

    def _remember(self, key: tuple, value: Any) -> None:
        self._cache[key] = value
        self._journal.append((key, self._txn.owner))

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
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
            table_identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
            sql.Identifier(returning),
        )
        cur = self._txn.execute(statement, list(row.values()))
        value = cur.fetchone()[0]
        cur.close()
        self._remember(_cache_key(table, returning, match), value)
        return value

    def preload(self, table: str, key: str, returning: str = "id") -> int:
        """Load a whole dimension ``key -> returning`` in one query; return its size."""
        statement = sql.SQL("SELECT {}, {} FROM {}").format(
            sql.Identifier(key), sql.Identifier(returning), table_identifier(table)
        )
        cur = self._txn.execute(statement, reads_only=True)
        rows = cur.fetchall()
        cur.close()
        for k, v in rows:
            self._cache[_cache_key(table, returning, {key: k})] = v
        self._preloaded.add((table, key, returning))
        return len(rows)

    # -- transaction bookkeeping (called by the runner) --------------------

    def forget_item(self, owner: Any) -> None:
        """``owner`` failed: drop every entry it added (it may have seen its own rows)."""
        keep = []
        for entry in self._journal:
            if entry[1] is owner:
                self._cache.pop(entry[0], None)
            else:
                keep.append(entry)
        self._journal = keep

    def chunk_committed(self) -> None:
        self._journal.clear()

    def chunk_rolled_back(self) -> None:
        for key, _who in self._journal:
            self._cache.pop(key, None)
        self._journal.clear()
