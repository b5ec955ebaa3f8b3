"""Create and migrate schema ``ingestkit``, safely when runs start at once."""

from __future__ import annotations

import re
from importlib import resources

import psycopg2
import psycopg2.errors
from psycopg2.extensions import connection, cursor

from .outcomes import UsageError
from .queries import q, read_sql

#: Key of the transaction-level advisory lock taken while creating or migrating.
SCHEMA_LOCK = 0x696B_0001


def migrations() -> dict[int, str]:
    """Numbered migrations: ``{number: sql}``."""
    folder = resources.files("ingestkit").joinpath("sql", "migrations")
    found = {}
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_.*\.sql$", entry.name)
        if match:
            found[int(match.group(1))] = entry.read_text("utf-8")
    return found


def current_version() -> int:
    return max([1, *migrations()])


def ensure_schema(conn: connection) -> None:
    """Bring schema ``ingestkit`` to the current version; a no-op when it is."""
    with conn.cursor() as cur:
        version = _version(cur)
    conn.commit()
    if version == current_version():
        return
    try:
        with conn.cursor() as cur:
            cur.execute(q("schema-lock"), (SCHEMA_LOCK,))
            version = _version(cur)  # another run may have done it meanwhile
            if version is None:
                cur.execute(q("namespace-exists"))
                if not _first(cur):
                    cur.execute(q("create-namespace"))
                cur.execute(read_sql("schema.sql"))
                cur.execute(q("set-schema-version"), (current_version(),))
            else:
                for number, sql in sorted(migrations().items()):
                    if number > version:
                        cur.execute(sql)
                        cur.execute(q("set-schema-version"), (number,))
        conn.commit()
    except psycopg2.errors.InsufficientPrivilege as exc:
        conn.rollback()
        first = str(exc).strip().splitlines()[0]
        raise UsageError(
            f"cannot create ingestkit's tables: {first}. Give this role CREATE on the "
            "database, or create its schema for it: CREATE SCHEMA ingestkit AUTHORIZATION <role>"
        ) from None


def _version(cur: cursor) -> int | None:
    cur.execute(q("schema-exists"))
    if not _first(cur):
        return None
    cur.execute(q("schema-version"))
    version = _first(cur)
    assert version is None or isinstance(version, int)
    return version


def _first(cur: cursor) -> object:
    """The first column of the next row (the queries here always return one)."""
    row = cur.fetchone()
    assert row is not None
    return row[0]
