"""The project's own pytest configuration.

Tests run against a real PostgreSQL: the server in ``INGESTKIT_TEST_DSN`` when
set, else an embedded one started for the session (see ``ingestkit.pytest_plugin``,
whose ``ingestkit_dsn`` fixture gives each test its own throwaway database).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg2
import pytest

from ingestkit.pytest_plugin import RunResult, query, run_ingestkit

#: The start of a pipeline file written with ``Project.write_noted``: ``note(...)``
#: appends a line to the file the ``events`` fixture reads (outside the project,
#: so no rollback can hide it).
NOTE = """\
import os

import ingestkit


def note(*parts):
    with open(os.environ["IK_EVENTS"], "a") as f:
        f.write(" ".join(str(p) for p in parts) + "\\n")

"""


class Project:
    """A folder of ingest files for one test, run against its own database."""

    def __init__(self, root: Path, dsn: str) -> None:
        self.root = root
        self.dsn = dsn

    def write(self, relpath: str, text: str | bytes = "") -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def write_noted(self, relpath: str, body: str) -> Path:
        """Write a pipeline or conftest file that starts with the ``note`` helper."""
        return self.write(relpath, NOTE + textwrap.dedent(body).lstrip("\n"))

    def run(self, *args: str, cwd: Path | None = None, plugins: list | None = None) -> RunResult:
        """Run ingestkit in-process in ``cwd`` (default: the project root)."""
        return run_ingestkit(cwd or self.root, *args, dsn=self.dsn, plugins=plugins)

    def spawn(
        self, *args: str, cwd: Path | None = None, dsn: bool = True, **kwargs
    ) -> subprocess.Popen:
        """Start ``python -m ingestkit`` as a user would, in a subprocess."""
        argv = [sys.executable, "-m", "ingestkit", *(["--dsn", self.dsn] if dsn else []), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
        return subprocess.Popen(
            argv,
            cwd=cwd or self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kwargs,
        )

    def cli(
        self,
        *args: str,
        cwd: Path | None = None,
        dsn: bool = True,
        env: dict | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """Run ``python -m ingestkit`` to completion; returns stdout+stderr in ``.stdout``."""
        proc = self.spawn(*args, cwd=cwd, dsn=dsn, env=env or {})
        out, _ = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)

    def wait_for_items(self, count: int, timeout: float = 30.0) -> None:
        """Wait until a running batch has committed ``count`` outcome rows."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if (self.scalar("SELECT count(*) FROM ingestkit.items") or 0) >= count:
                    return
            except psycopg2.Error:
                pass  # the schema may not exist yet
            time.sleep(0.05)
        raise TimeoutError(f"fewer than {count} items committed after {timeout} s")

    def query(self, statement: str, params=None) -> list[dict]:
        return query(self.dsn, statement, params)

    def scalar(self, statement: str, params=None):
        rows = self.query(statement, params)
        return next(iter(rows[0].values())) if rows else None


@pytest.fixture
def project(tmp_path: Path, ingestkit_dsn: str) -> Project:
    """An empty project folder (it is its own rootdir) with a throwaway database."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "ingestkit.toml").write_text("")
    return Project(root, ingestkit_dsn)


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Reads the lines the pipelines noted with ``note(...)``."""
    path = tmp_path / "events.txt"
    monkeypatch.setenv("IK_EVENTS", str(path))

    def read() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    return read
