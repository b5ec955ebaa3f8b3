"""pytest plugin shipped with ingestkit: test your processors in your own suite.

Fixtures:

``ingestkit_server_dsn`` (session)
    A PostgreSQL server to make databases on: ``INGESTKIT_TEST_DSN`` when set,
    else an embedded PostgreSQL started for the test session.
``ingestkit_dsn``
    A throwaway database on that server, dropped after the test.
``ingestkit_run``
    ``ingestkit_run(folder, *args)`` runs ingestkit in-process on ``folder``
    against ``ingestkit_dsn`` and returns a :class:`RunResult`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest
from psycopg2 import sql


@dataclass
class RunResult:
    """What one in-process ``ingestkit`` run did."""

    exit_code: int
    output: str
    dsn: str
    batch_id: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    batch: dict[str, Any] | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Counts by status as recorded for the batch (with ``unchanged``)."""
        if self.batch and self.batch.get("counts"):
            return {k: v for k, v in self.batch["counts"].items() if v}
        return dict(Counter(i["status"] for i in self.items))

    def by_key(self) -> dict[str, dict[str, Any]]:
        return {i["key"]: i for i in self.items}

    def statuses(self) -> dict[str, str]:
        return {i["key"]: i["status"] for i in self.items}

    def query(self, statement: str, params: Any = None) -> list[dict[str, Any]]:
        """Run a query on the run's database (to check the target tables)."""
        return query(self.dsn, statement, params)


def query(dsn: str, statement: str, params: Any = None) -> list[dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(statement, params)
            rows = [dict(r) for r in cur.fetchall()] if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def run_ingestkit(
    folder: str | os.PathLike[str], *args: str, dsn: str, plugins: list[object] | None = None
) -> RunResult:
    """Run ingestkit in-process with ``folder`` as the current directory."""
    from .cli import main

    out = io.StringIO()
    old = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(["--dsn", dsn, *args], plugins=plugins)
    finally:
        os.chdir(old)
    result = RunResult(int(code), out.getvalue(), dsn)
    try:
        batches = query(dsn, "SELECT * FROM ingestkit.batches ORDER BY started_at DESC LIMIT 1")
    except psycopg2.Error:
        return result
    if batches:
        result.batch = batches[0]
        result.batch_id = str(batches[0]["id"])
        result.items = query(
            dsn,
            "SELECT * FROM ingestkit.items WHERE batch_id = %s ORDER BY finished_at, key",
            (result.batch_id,),
        )
    return result


@pytest.fixture(scope="session")
def ingestkit_server_dsn() -> Iterator[str]:
    """A server to create throwaway databases on."""
    dsn = os.environ.get("INGESTKIT_TEST_DSN")
    if dsn:
        yield dsn
        return
    from .embedded import start_embedded

    with tempfile.TemporaryDirectory(prefix="ingestkit-test-") as tmp:
        yield start_embedded(Path(tmp))


@contextlib.contextmanager
def throwaway_database(server_dsn: str) -> Iterator[str]:
    name = f"ingestkit_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield psycopg2.extensions.make_dsn(server_dsn, dbname=name)
    finally:
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()


@pytest.fixture
def ingestkit_dsn(ingestkit_server_dsn: str) -> Iterator[str]:
    """A throwaway database, dropped after the test."""
    with throwaway_database(ingestkit_server_dsn) as dsn:
        yield dsn


@pytest.fixture
def ingestkit_run(ingestkit_dsn: str) -> Callable[..., RunResult]:
    """``ingestkit_run(folder, *args) -> RunResult``, on the test's throwaway database."""

    def run(
        folder: str | os.PathLike[str], *args: str, plugins: list[object] | None = None
    ) -> RunResult:
        return run_ingestkit(folder, *args, dsn=ingestkit_dsn, plugins=plugins)

    return run
