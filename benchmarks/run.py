"""ingestkit's throughput and memory against what users would write instead.

One command, one machine, one database server; every figure of a table comes
from the same run, so the ratios are comparable:

    python benchmarks/run.py                  # against INGESTKIT_BENCH_DSN / INGESTKIT_TEST_DSN
    python benchmarks/run.py --rows 50000 --million 200000   # a quicker pass
    python benchmarks/run.py --only workers   # one section: -n N against one process

Each measurement gets a fresh database on the server. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import decimal
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

sys.path.insert(0, str(Path(__file__).parent))
import flights  # noqa: E402

import ingestkit  # noqa: E402
from ingestkit.pytest_plugin import throwaway_database  # noqa: E402

results: list[tuple[str, int, float, str]] = []  # (name, items, seconds, note)


def database(server: str) -> contextlib.AbstractContextManager[str]:
    """A fresh database on ``server``, dropped afterwards."""
    return throwaway_database(server)


def record(name: str, items: int, seconds: float, note: str = "") -> float:
    rate = items / seconds
    results.append((name, items, seconds, note))
    print(f"  {name:<58} {items:>9,} items {seconds:8.2f} s {rate:>11,.0f}/s {note}", flush=True)
    return rate


class CpuMeter:
    """CPU seconds of this process and of the server's backends for one database,
    for ratios that a loaded machine skews less than wall time (other sessions'
    work is not in them). The backends are seen in ``pg_stat_activity`` every
    20 ms and read from ``/proc`` (a local server only; else ``server`` is None):
    up to 20 ms of a backend's last work before it exits is not counted."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.client = 0.0
        self.server: float | None = None
        self._done = threading.Event()
        self._seen: dict[int, float] = {}
        self._own = 0.0  # the sampler thread's own CPU, not the measured work's

    @staticmethod
    def _backend_cpu(pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while True:
                    cur.execute(
                        "SELECT pid FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                    for (pid,) in cur.fetchall():
                        cpu = self._backend_cpu(pid)
                        if cpu is not None:
                            self._seen[pid] = max(cpu, self._seen.get(pid, 0.0))
                    if self._done.wait(0.02):
                        break
        finally:
            conn.close()
            self._own = time.thread_time()

    def __enter__(self) -> CpuMeter:
        host = psycopg2.extensions.parse_dsn(self.dsn).get("host", "")
        self._local = host in ("", "127.0.0.1", "localhost", "::1") or host.startswith("/")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._local:
            self._thread.start()
        self._start = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client = time.process_time() - self._start
        if self._local:
            self._done.set()
            self._thread.join()
            self.client -= self._own
            if self._seen:
                self.server = sum(self._seen.values())

    @property
    def total(self) -> float | None:
        return None if self.server is None else self.client + self.server

    def show(self) -> str:
        if self.server is None:
            return f"    CPU: this process {self.client:.2f} s"
        return (
            f"    CPU: this process {self.client:.2f} s + its server backends"
            f" {self.server:.2f} s = {self.total:.2f} s"
        )


def cpu_ratio(hand: CpuMeter, ours: CpuMeter) -> str:
    """ingestkit's rate over the hand-written loader's, by CPU seconds."""
    if hand.total is None or ours.total is None:
        return ""
    return f"   (by CPU seconds: {hand.total / ours.total:.2f}x)"


# -- baselines ----------------------------------------------------------------


def copy_ceiling(dsn: str, path: Path, rows: int) -> float:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE flights_raw (" + ", ".join(f"{c} text" for c in flights.HEADER) + ")"
        )
        start = time.perf_counter()
        with open(path, "rb") as f:
            cur.copy_expert("COPY flights_raw FROM STDIN WITH (FORMAT csv, HEADER true)", f)
        conn.commit()
        seconds = time.perf_counter() - start
    conn.close()
    return record("COPY FROM STDIN of the raw CSV, no lookups (ceiling)", rows, seconds)


def _flight_row(r: dict, carriers: dict, airports: dict) -> tuple:
    return (
        int(r["id"]),
        datetime.date(int(r["year"]), int(r["month"]), int(r["day"])),
        carriers[r["carrier"]],
        int(r["flight"]),
        airports[r["origin"]],
        airports[r["dest"]],
        int(r["dep_delay"]),
        int(r["distance"]),
    )


def hand_written(dsn: str, path: Path, rows: int) -> float:
    """Dimensions preloaded into dicts, execute_values pages of 1000, an outcome
    row per record, one transaction: the careful script."""
    conn = psycopg2.connect(dsn)
    flights.create_dimensions(conn)
    start = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE outcomes (key text, status text, error text)")
        cur.execute("SELECT code, id FROM carriers")
        carriers = dict(cur.fetchall())
        cur.execute("SELECT code, id FROM airports")
        airports = dict(cur.fetchall())
        facts, outcomes = [], []

        def flush() -> None:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO flights VALUES %s", facts, page_size=1000
            )
            psycopg2.extras.execute_values(
                cur, "INSERT INTO outcomes VALUES %s", outcomes, page_size=1000
            )
            facts.clear()
            outcomes.clear()

        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    facts.append(_flight_row(r, carriers, airports))
                    outcomes.append((r["id"], "succeeded", None))
                except (KeyError, ValueError) as exc:
                    outcomes.append((r["id"], "failed", repr(exc)))
                if len(outcomes) >= 1000:
                    flush()
        flush()
    conn.commit()
    seconds = time.perf_counter() - start
    conn.close()
    return record("hand-written: preloaded dicts, execute_values, outcome rows", rows, seconds)


def hand_written_checked(dsn: str, path: Path, rows: int, name: str) -> float:
    """The careful script when the table rejects rows: execute_values pages of
    1000 under a savepoint; a page that fails goes again row by row, each row
    under its own savepoint, and every rejected row gets a failed outcome row.
    A commit per page (subtransactions of one huge transaction run out of locks)."""
    conn = psycopg2.connect(dsn)
    flights.create_dimensions(conn)
    insert = "INSERT INTO flights_checked VALUES %s"
    start = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE outcomes (key text, status text, error text)")
        cur.execute("SELECT code, id FROM carriers")
        carriers = dict(cur.fetchall())
        cur.execute("SELECT code, id FROM airports")
        airports = dict(cur.fetchall())
        facts: list[tuple] = []
        outcomes: list[tuple] = []

        def flush() -> None:
            cur.execute("SAVEPOINT page")
            try:
                psycopg2.extras.execute_values(cur, insert, facts, page_size=1000)
                cur.execute("RELEASE SAVEPOINT page")
                outcomes.extend((str(f[0]), "succeeded", None) for f in facts)
            except psycopg2.Error:
                cur.execute("ROLLBACK TO SAVEPOINT page")
                for fact in facts:
                    cur.execute("SAVEPOINT row")
                    try:
                        psycopg2.extras.execute_values(cur, insert, [fact])
                        cur.execute("RELEASE SAVEPOINT row")
                        outcomes.append((str(fact[0]), "succeeded", None))
                    except psycopg2.Error as exc:
                        cur.execute("ROLLBACK TO SAVEPOINT row")
                        outcomes.append((str(fact[0]), "failed", str(exc)))
            psycopg2.extras.execute_values(
                cur, "INSERT INTO outcomes VALUES %s", outcomes, page_size=1000
            )
            conn.commit()
            facts.clear()
            outcomes.clear()

        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                facts.append(_flight_row(r, carriers, airports))
                if len(facts) >= 1000:
                    flush()
        flush()
    conn.commit()
    seconds = time.perf_counter() - start
    conn.close()
    return record(name, rows, seconds)


def naive_script(dsn: str, path: Path, rows: int) -> float:
    """A SELECT per lookup, an INSERT, a commit per row (on the first rows only)."""
    conn = psycopg2.connect(dsn)
    flights.create_dimensions(conn)
    done = 0
    start = time.perf_counter()
    with conn.cursor() as cur, open(path, newline="") as f:
        for r in csv.DictReader(f):
            if done >= rows:
                break
            done += 1
            try:
                ids = {}
                for table, field in (
                    ("carriers", "carrier"),
                    ("airports", "origin"),
                    ("airports", "dest"),
                ):
                    cur.execute(
                        sql.SQL("SELECT id FROM {} WHERE code = %s").format(sql.Identifier(table)),
                        (r[field],),
                    )
                    found = cur.fetchone()
                    if found is None:
                        raise KeyError(r[field])
                    ids[field] = found[0]
                cur.execute(
                    "INSERT INTO flights VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    _flight_row(
                        r,
                        {r["carrier"]: ids["carrier"]},
                        {r["origin"]: ids["origin"], r["dest"]: ids["dest"]},
                    ),
                )
            except (KeyError, ValueError):
                pass
            conn.commit()
    seconds = time.perf_counter() - start
    conn.close()
    return record("the usual script: SELECT per lookup, INSERT, commit per row", done, seconds)


def pytest_trivial(count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_many.py").write_text(
            "import pytest\n\n"
            f"@pytest.mark.parametrize('i', range({count}))\n"
            "def test_it(i):\n    pass\n"
        )
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:ingestkit",
                tmp,
            ],
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - start
    return record("pytest itself, trivial tests", count, seconds)


# -- ingestkit ----------------------------------------------------------------

FLIGHTS_PIPELINE = """
import datetime
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def dimensions(lookup):
    lookup.preload("carriers", "code")
    lookup.preload("airports", "code")

@ingestkit.source(ingestkit.read_csv({csv!r}), key="id")
def process_flight(record, db, lookup):
    db.insert("flights", {{
        "id": int(record["id"]),
        "flown_on": datetime.date(int(record["year"]), int(record["month"]), int(record["day"])),
        "carrier_id": lookup("carriers", code=record["carrier"]),
        "flight": int(record["flight"]),
        "origin_id": lookup("airports", code=record["origin"]),
        "dest_id": lookup("airports", code=record["dest"]),
        "dep_delay": int(record["dep_delay"]),
        "distance": int(record["distance"]),
    }})
"""

#: The dirty load as a user who does not know lookup.preload writes it.
DIRTY_PIPELINE = FLIGHTS_PIPELINE.replace(
    """@ingestkit.fixture(scope="batch", autouse=True)
def dimensions(lookup):
    lookup.preload("carriers", "code")
    lookup.preload("airports", "code")

""",
    "",
)
CHECKED_PIPELINE = FLIGHTS_PIPELINE.replace('db.insert("flights"', 'db.insert("flights_checked"')

TRIVIAL_PIPELINE = """
import os
import ingestkit

FAIL_EVERY = int(os.environ.get("BENCH_FAIL_EVERY", "0"))

@ingestkit.source(({{"id": i, "name": "name %d" % i}} for i in range({count})), key="id")
def process_row(record):
    if FAIL_EVERY and record["id"] % FAIL_EVERY == 0:
        raise ValueError("bad row")
"""

API_PIPELINE = """
import time
import ingestkit

@ingestkit.source(({{"id": i}} for i in range({count})), key="id")
def process_api_call(record):
    time.sleep(0.002)  # an API call: waiting, not computing
"""


def run_ingestkit(
    folder: Path, dsn: str, *args: str, expect: int | None = None
) -> tuple[float, int]:
    out = io.StringIO()
    start = time.perf_counter()
    # from the project folder, as users run it
    with (
        contextlib.chdir(folder),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(out),
    ):
        code = ingestkit.main(["--dsn", dsn, "-q", "--tb=no", str(folder), *args])
    seconds = time.perf_counter() - start
    if code not in (0, 1) or (expect is not None and code != expect):
        print(out.getvalue())
        wanted = f", expected {expect}" if expect is not None else ""
        raise SystemExit(f"ingestkit {' '.join(args)} exited {code}{wanted}")
    return seconds, code


def outcome_counts(dsn: str) -> dict[str, int]:
    """Outcome rows by status in ``ingestkit.items``; raises if a key has two."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT status, count(*), count(DISTINCT (processor, key))"
            " FROM ingestkit.items GROUP BY status"
        )
        rows = cur.fetchall()
        cur.execute("SELECT count(*) FROM ingestkit.batches")
        batches = cur.fetchone()[0]
    conn.close()
    assert batches == 1, f"{batches} batches in a fresh database"
    assert all(total == keys for _, total, keys in rows), f"an item recorded twice: {rows}"
    return {status: total for status, total, _ in rows}


def ingestkit_flights(
    dsn: str,
    path: Path,
    rows: int,
    bad: int,
    *args: str,
    name: str = "ingestkit: read_csv, 3 lookups, db.insert, every outcome",
    speedups: Callable[[float], str] | None = None,
    pipeline: str = FLIGHTS_PIPELINE,
    table: str = "flights",
) -> float:
    """``speedups(rate)``: more of the printed note, from this run's rate."""
    conn = psycopg2.connect(dsn)
    flights.create_dimensions(conn)
    conn.close()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "ingestkit.toml").write_text("")
        (folder / "ingest_flights.py").write_text(pipeline.format(csv=str(path)))
        seconds, _ = run_ingestkit(folder, dsn, *args, expect=1 if bad else 0)
    check = psycopg2.connect(dsn)
    with check.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        written = cur.fetchone()[0]
    check.close()
    outcomes = outcome_counts(dsn)
    expected = {"succeeded": rows - bad, "failed": bad} if bad else {"succeeded": rows}
    assert written == rows - bad, (written, rows, bad)
    assert outcomes == expected, (outcomes, expected)
    note = f"({bad:,} failed)"
    if speedups is not None:
        note += " " + speedups(rows / seconds)
    return record(name, rows, seconds, note)


def trivial_project(tmp: Path, count: int) -> Path:
    (tmp / "ingestkit.toml").write_text("")
    (tmp / "ingest_trivial.py").write_text(TRIVIAL_PIPELINE.format(count=count))
    return tmp


def ingestkit_trivial(server: str, count: int) -> tuple[float, float]:
    """A trivial processor over ``count`` records, then --lf after 1% failed."""
    with tempfile.TemporaryDirectory() as tmp, database(server) as dsn:
        folder = trivial_project(Path(tmp), count)
        os.environ["BENCH_FAIL_EVERY"] = "100"
        seconds, _ = run_ingestkit(folder, dsn)
        full = record("ingestkit: trivial processor, 1% failing, full tracking", count, seconds)
        os.environ["BENCH_FAIL_EVERY"] = "0"
        lf_seconds, _ = run_ingestkit(folder, dsn, "--lf")
        record(
            "ingestkit --lf over those 1% failures",
            count // 100,
            lf_seconds,
            f"({lf_seconds / seconds:.1%} of the full run's time)",
        )
        return full, lf_seconds / seconds


def peak_rss_mb(server: str, count: int) -> float:
    """Peak RSS of a separate ``ingestkit`` process over ``count`` records."""
    with tempfile.TemporaryDirectory() as tmp, database(server) as dsn:
        folder = trivial_project(Path(tmp), count)
        code = (
            "import resource, sys, ingestkit\n"
            f"code = ingestkit.main(['--dsn', {dsn!r}, '-q', {str(folder)!r}])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        return int(done.stdout.strip().splitlines()[-1]) / 1024


# -- scale out: -n N worker processes ------------------------------------------


def _workers_name(what: str, n: int) -> str:
    return f"ingestkit {f'-n {n}' if n else 'one process'}: {what}"


def _speedups(rates: dict[int, float], n: int) -> str:
    """``n``'s rate against the one-process run (0), and against -n 1."""
    parts = [f"{rates[n] / rates[0]:5.2f}x one process"]
    if 1 in rates:
        parts.append(f"{rates[n] / rates[1]:5.2f}x -n 1")
    return "(" + ", ".join(parts) + ")"


def workers_api(server: str, count: int, numprocesses: list[int]) -> dict[int, float]:
    """A processor that waits 2 ms per item, in one process and on -n N workers
    (0: in one process). Each run gets a fresh folder and database."""
    rates: dict[int, float] = {}
    for n in (0, *numprocesses):
        with tempfile.TemporaryDirectory() as tmp, database(server) as dsn:
            folder = Path(tmp)
            (folder / "ingestkit.toml").write_text("")
            (folder / "ingest_api.py").write_text(API_PIPELINE.format(count=count))
            seconds, _ = run_ingestkit(folder, dsn, *(("-n", str(n)) if n else ()), expect=0)
            outcomes = outcome_counts(dsn)
        assert outcomes == {"succeeded": count}, (n, outcomes, count)
        rates[n] = count / seconds
        note = _speedups(rates, n) if n else ""
        record(_workers_name("2 ms wait per item (an API call)", n), count, seconds, note)
    return rates


def workers_joined(server: str, count: int, joined: int) -> float:
    """The 2 ms processor on ``-n 1`` plus ``joined`` workers started with
    ``ingestkit worker --batch ID`` once the batch runs, as on other machines;
    from the leader's start to its exit."""
    with tempfile.TemporaryDirectory() as tmp, database(server) as dsn:
        folder = Path(tmp)
        (folder / "ingestkit.toml").write_text("")
        (folder / "ingest_api.py").write_text(API_PIPELINE.format(count=count))
        command = [sys.executable, "-m", "ingestkit", "--dsn", dsn, "-q", "--tb=no"]
        start = time.perf_counter()
        leader = subprocess.Popen([*command, "-n", "1"], cwd=folder, stdout=subprocess.DEVNULL)
        batch = None
        while batch is None and leader.poll() is None:
            with contextlib.suppress(psycopg2.Error), psycopg2.connect(dsn) as conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT id FROM ingestkit.batches WHERE status = 'running'")
                    batch = (cur.fetchone() or (None,))[0]
            time.sleep(0.05)
        workers = [
            subprocess.Popen(
                [*command, "worker", "--batch", str(batch)], cwd=folder, stdout=subprocess.DEVNULL
            )
            for _ in range(joined)
        ]
        code = leader.wait()
        seconds = time.perf_counter() - start
        for worker in workers:
            worker.wait()
        outcomes = outcome_counts(dsn)
    assert code == 0 and outcomes == {"succeeded": count}, (code, outcomes)
    record(f"ingestkit -n 1 + {joined} joined: 2 ms wait per item", count, seconds)
    return count / seconds


def workers_flights(server: str, rows: int, numprocesses: list[int]) -> dict[int, float]:
    """The ingestkit flights job in one process and on -n N workers."""
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flights.csv"
        bad = flights.write_csv(path, rows)
        for n in (0, *numprocesses):
            with database(server) as dsn:
                rates[n] = ingestkit_flights(
                    dsn,
                    path,
                    rows,
                    bad,
                    *(("-n", str(n)) if n else ()),
                    name=_workers_name("flights, 3 lookups, db.insert", n),
                    speedups=lambda rate, n=n: _speedups(rates | {n: rate}, n) if n else "",
                )
    return rates


# -- upserts and typed records (issue 14) -------------------------------------------

PEOPLE_TABLE = (
    "CREATE TABLE IF NOT EXISTS people (id int PRIMARY KEY, name text NOT NULL, "
    "born int, score numeric(10, 2), joined date)"
)

PEOPLE_PIPELINE = """
import datetime
from dataclasses import dataclass
from decimal import Decimal

import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute({table!r})

@dataclass
class Person:
    id: int
    name: str
    born: int | None
    score: Decimal
    joined: datetime.date

@ingestkit.source(ingestkit.read_csv({csv!r}), key="id")
def process_person(record{annotation}, db):
{body}
"""

#: processor bodies: db.upsert of the typed record, and the dict/typed pairs
UPSERT_BODY = '    db.upsert("people", record, conflict="id")'
INSERT_BODY = '    db.insert("people", record)'
NOOP_BODY = "    pass"


def write_people(path: Path, rows: int, changed_every: int = 0) -> None:
    """``rows`` people; with ``changed_every``, every n-th row has a new score."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "born", "score", "joined"])
        for i in range(1, rows + 1):
            score = (i % 1000) + 0.25 + (1 if changed_every and i % changed_every == 0 else 0)
            born = "" if i % 17 == 0 else 1930 + i % 80
            joined = datetime.date(2000, 1, 1) + datetime.timedelta(days=i % 7000)
            w.writerow([i, f"person {i}", born, f"{score:.2f}", joined.isoformat()])


def hand_written_upsert(dsn: str, path: Path, rows: int, name: str) -> float:
    """The careful script: parse, execute_values pages of 1000 with ON CONFLICT DO
    UPDATE, an outcome row per record, one transaction."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(PEOPLE_TABLE)
        cur.execute("CREATE TABLE IF NOT EXISTS outcomes (key text, status text, error text)")
    conn.commit()
    start = time.perf_counter()
    with conn.cursor() as cur:
        facts, outcomes = [], []

        def flush() -> None:
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO people (id, name, born, score, joined) VALUES %s ON CONFLICT (id)"
                " DO UPDATE SET name = EXCLUDED.name, born = EXCLUDED.born,"
                " score = EXCLUDED.score, joined = EXCLUDED.joined",
                facts,
                page_size=1000,
            )
            psycopg2.extras.execute_values(
                cur, "INSERT INTO outcomes VALUES %s", outcomes, page_size=1000
            )
            facts.clear()
            outcomes.clear()

        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    facts.append(
                        (
                            int(r["id"]),
                            r["name"],
                            int(r["born"]) if r["born"] else None,
                            decimal.Decimal(r["score"]),
                            datetime.date.fromisoformat(r["joined"]),
                        )
                    )
                    outcomes.append((r["id"], "succeeded", None))
                except (KeyError, ValueError, decimal.InvalidOperation) as exc:
                    outcomes.append((r["id"], "failed", repr(exc)))
                if len(outcomes) >= 1000:
                    flush()
        flush()
    conn.commit()
    seconds = time.perf_counter() - start
    conn.close()
    return record(name, rows, seconds)


def people_folder(folder: Path, path: Path, body: str, typed: bool = True) -> Path:
    (folder / "ingestkit.toml").write_text("")
    (folder / "ingest_people.py").write_text(
        PEOPLE_PIPELINE.format(
            table=PEOPLE_TABLE,
            csv=str(path),
            annotation=": Person" if typed else "",
            body=body,
        )
    )
    return folder


def _people_rows(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM people")
        count = cur.fetchone()[0]
    conn.close()
    return count


def upserts(server: str, rows: int) -> list[str]:
    """db.upsert of typed records against execute_values ... ON CONFLICT, first load
    and a reload of the same file with 10% of its rows changed."""
    with tempfile.TemporaryDirectory() as tmp:
        first, changed = Path(tmp) / "people.csv", Path(tmp) / "people2.csv"
        write_people(first, rows)
        write_people(changed, rows, changed_every=10)
        with database(server) as dsn:
            hand_first = hand_written_upsert(dsn, first, rows, "hand-written upsert: first load")
            hand_again = hand_written_upsert(
                dsn, changed, rows, "hand-written upsert: reload, 10% changed"
            )
        with database(server) as dsn:
            (Path(tmp) / "a").mkdir()
            folder = people_folder(Path(tmp) / "a", first, UPSERT_BODY)
            seconds, _ = run_ingestkit(folder, dsn, expect=0)
            assert _people_rows(dsn) == rows
            ours_first = record("ingestkit db.upsert(typed record): first load", rows, seconds)
            (folder / "ingest_people.py").write_text(
                (folder / "ingest_people.py").read_text().replace(str(first), str(changed))
            )
            seconds, _ = run_ingestkit(folder, dsn, expect=0)
            ours_again = record("ingestkit: reload, 10% changed (unchanged skipped)", rows, seconds)
            seconds, _ = run_ingestkit(folder, dsn, "--reprocess", expect=0)
            ours_all = record("ingestkit --reprocess: reload, every row upserted", rows, seconds)
            assert _people_rows(dsn) == rows
    return [
        f"ingestkit upsert / execute_values upsert, first   {ours_first / hand_first:6.2f}x"
        "   [>= 1.0x]",
        f"ingestkit / execute_values, reload 10% changed    {ours_again / hand_again:6.2f}x"
        "   [>= 1.0x]",
        f"  the same, ingestkit --reprocess (all rows)      {ours_all / hand_again:6.2f}x",
    ]


def typed_overhead(server: str, rows: int) -> list[str]:
    """The same processor with a dict record and with a typed (dataclass) record."""
    rates: dict[tuple[str, bool], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "people.csv"
        write_people(path, rows)
        for what, body in (("db.insert", INSERT_BODY), ("no-op", NOOP_BODY)):
            for typed in (False, True):
                folder = Path(tmp) / f"{what}-{typed}"
                folder.mkdir()
                people_folder(folder, path, body, typed)
                with database(server) as dsn:
                    seconds, _ = run_ingestkit(folder, dsn, expect=0)
                    kind = "typed record (dataclass)" if typed else "dict record"
                    rates[(what, typed)] = record(f"ingestkit {what}, {kind}", rows, seconds)
    lines = []
    for what in ("db.insert", "no-op"):
        per_item = rates[(what, False)] / rates[(what, True)] - 1
        lines.append(
            f"{f'typed record overhead per item, {what}':<49}{per_item:6.1%}"
            + ("   [<= 15%]" if what == "db.insert" else "")
        )
    return lines


# -- history: bookkeeping bytes per outcome --------------------------------------

#: Bytes of ingestkit's history tables, indexes and TOAST included (a partitioned
#: table's size is the sum of its partitions').
HISTORY_BYTES = """
SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint,
       coalesce(sum(pg_indexes_size(relid)), 0)::bigint
FROM (SELECT relid FROM pg_partition_tree(%(t)s::regclass) UNION SELECT %(t)s::regclass) r
"""


def history_bytes(server: str, rows: int) -> tuple[float, float]:
    """The flights job over ``rows`` rows, then the bytes per outcome row of
    ``ingestkit.items`` and per key of ``ingestkit.latest``."""
    with tempfile.TemporaryDirectory() as tmp, database(server) as dsn:
        path = Path(tmp) / "flights.csv"
        bad = flights.write_csv(path, rows)
        ingestkit_flights(dsn, path, rows, bad)
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            # the rows of ingestkit.items are in ingestkit.outcomes (migration 0011)
            cur.execute("SELECT to_regclass('ingestkit.outcomes') IS NOT NULL")
            stored_in = "ingestkit.outcomes" if cur.fetchone()[0] else "ingestkit.items"
            cur.execute(f"VACUUM ANALYZE {stored_in}, ingestkit.latest")
            cur.execute("SELECT count(*) FROM ingestkit.items")
            outcomes = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM ingestkit.latest")
            keys = cur.fetchone()[0]
            per = {}
            for table, stored, count in (
                ("ingestkit.items", stored_in, outcomes),
                ("ingestkit.latest", "ingestkit.latest", keys),
            ):
                cur.execute(HISTORY_BYTES, {"t": stored})
                total, indexes = cur.fetchone()
                per[table] = total / count
                print(
                    f"  {table:<17} {count:>9,} rows {total / 2**20:8.1f} MB"
                    f" {total / count:7.1f} bytes per row ({indexes / count:5.1f} of them indexes)"
                )
        conn.close()
    return per["ingestkit.items"], per["ingestkit.latest"]


# -- files: a folder of drops, Excel, Parquet, nested JSON (issue #17) ---------

FILES_PIPELINE = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS drops (id int PRIMARY KEY, name text, amount text)")

@ingestkit.source(ingestkit.read_csv("drops/*.csv"), key="id")
def process_drop(record, db):
    db.upsert("drops", {"id": int(record["id"]), "name": record["name"],
                        "amount": record["amount"]}, conflict=("id",))
"""


def write_drop(path: Path, first: int, rows: int, tag: str = "") -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "name", "amount"])
        for i in range(first, first + rows):
            out.writerow([i, f"customer {i}{tag}", f"{i % 1000}.{i % 100:02d}"])


def files_folder(server: str, count: int, rows: int) -> list[str]:
    """A folder of ``count`` CSV drops: a first load, an unchanged rerun, one file changed."""
    per = max(1, rows // count)
    lines = []
    with tempfile.TemporaryDirectory() as tmp, database(server) as dsn:
        folder = Path(tmp)
        (folder / "ingestkit.toml").write_text("")
        (folder / "drops").mkdir()
        for n in range(count):
            write_drop(folder / "drops" / f"drop-{n:05d}.csv", n * per, per)
        (folder / "ingest_drops.py").write_text(FILES_PIPELINE)
        total = count * per
        first, _ = run_ingestkit(folder, dsn, expect=0)
        record(f"first load: {count:,} files", total, first)
        again, _ = run_ingestkit(folder, dsn, expect=0)
        record(f"unchanged rerun: {count:,} files", total, again)
        counts = outcome_counts_last(dsn)
        skipped = _files_skipped(dsn)
        print(f"    unchanged rerun: counts {counts}, files not parsed again: {skipped:,}")
        changed = count // 2
        write_drop(folder / "drops" / f"drop-{changed:05d}.csv", changed * per, per, " (new)")
        one, _ = run_ingestkit(folder, dsn, expect=0)
        record("one file changed", total, one)
        print(f"    one file changed: counts {outcome_counts_last(dsn)}")
        with database(server) as dsn_n:  # the first load again, on 2 workers
            cpu = time.process_time()
            first_n, _ = run_ingestkit(folder, dsn_n, "-n", "2", expect=0)
            leader_cpu = time.process_time() - cpu
            record(f"first load: {count:,} files, -n 2", total, first_n)
            print(f"    -n 2: the leader's CPU {leader_cpu:.2f} s (the workers read the files)")
    lines.append(
        f"unchanged rerun / first load, {count:,} files       {again / first:6.1%}   [< 3%]"
    )
    lines.append(f"one file changed / first load                    {one / first:6.1%}")
    lines.append(f"first load -n 2 / one process                     {first / first_n:5.2f}x")
    return lines


def outcome_counts_last(dsn: str) -> dict[str, int]:
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT counts FROM ingestkit.batches ORDER BY started_at DESC LIMIT 1")
        counts = {k: v for k, v in cur.fetchone()[0].items() if v}
    conn.close()
    return counts


def _files_skipped(dsn: str) -> int:
    """Files of the last batch's processor whose ledger row is older than the batch."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM ingestkit.files WHERE status = 'complete' AND batch_id <> "
            "(SELECT id FROM ingestkit.batches ORDER BY started_at DESC LIMIT 1)"
        )
        skipped = cur.fetchone()[0]
    conn.close()
    return skipped


def write_xlsx(path: Path, rows: int) -> None:
    import openpyxl

    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("Data")
    sheet.append(["id", "name", "amount", "when"])
    day = datetime.date(2026, 1, 1)
    for i in range(rows):
        sheet.append([i, f"customer {i}", i * 0.25, day])
    book.save(path)


def write_parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "name": pa.array([f"customer {i}" for i in range(rows)]),
            "amount": pa.array([i * 0.25 for i in range(rows)]),
        }
    )
    pq.write_table(table, path, row_group_size=50_000)


def write_nested_json(path: Path, rows: int) -> None:
    with open(path, "w") as f:
        f.write('{"meta": {"source": "vendor"}, "data": {"items": [')
        for i in range(rows):
            f.write(("," if i else "") + json.dumps({"id": i, "name": f"c {i}", "amount": i / 4}))
        f.write("]}}")


def _library_xlsx(path: Path) -> int:
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    rows = book.worksheets[0].iter_rows(values_only=True)
    header = [str(v) for v in next(rows)]
    n = 0
    for row in rows:
        dict(zip(header, row, strict=False))
        n += 1
    book.close()
    return n


def _library_parquet(path: Path) -> int:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
        for _ in batch.to_pylist():
            n += 1
    return n


def _generator_count(library: Callable[[Path], int], path: Path) -> int:
    """The library loop written as a user's generator source, read as ingestkit reads
    any iterable (an entry per record)."""
    from ingestkit.sources import iter_entries

    if library is _library_parquet:
        import pyarrow.parquet as pq

        def rows() -> Iterator[dict]:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
                yield from batch.to_pylist()
    else:
        import openpyxl

        def rows() -> Iterator[dict]:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
            it = book.worksheets[0].iter_rows(values_only=True)
            header = [str(v) for v in next(it)]
            for row in it:
                yield dict(zip(header, row, strict=False))
            book.close()

    return sum(1 for _ in iter_entries(rows(), None))


def _reader_count(reader: object) -> int:
    return sum(1 for _ in reader.entries())  # type: ignore[attr-defined]


def _best_of(runs: int, func: Callable[[], int]) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(runs):
        start = time.perf_counter()
        n = func()
        best = min(best, time.perf_counter() - start)
    return best, n


def reader_throughput(rows: int) -> list[str]:
    """read_xlsx / read_parquet against the libraries' own read loops (best of 3)."""
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        xlsx, parquet = Path(tmp) / "data.xlsx", Path(tmp) / "data.parquet"
        write_xlsx(xlsx, rows)
        write_parquet(parquet, rows)
        for name, path, library, reader in (
            ("xlsx", xlsx, _library_xlsx, ingestkit.read_xlsx(xlsx)),
            ("parquet", parquet, _library_parquet, ingestkit.read_parquet(parquet)),
        ):
            lib_s, lib_n = _best_of(3, lambda p=path, f=library: f(p))
            ours_s, ours_n = _best_of(3, lambda r=reader: _reader_count(r))
            assert lib_n == ours_n == rows, (lib_n, ours_n)
            gen_s, gen_n = _best_of(3, lambda p=path, f=library: _generator_count(f, p))
            lib_rate = record(f"{name}: the library's read loop (rows as dicts)", rows, lib_s)
            gen_rate = record(f"{name}: that loop as a generator source, as entries", gen_n, gen_s)
            ours_rate = record(f"{name}: read_{name} entries", rows, ours_s)
            lines.append(
                f"{f'read_{name} / its library read loop':<49}{ours_rate / lib_rate:6.2f}x"
                "   [>= 0.8x]"
            )
            lines.append(
                f"{f'read_{name} / the loop as a generator source':<49}{ours_rate / gen_rate:6.2f}x"
            )
    return lines


# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak at the fork
RSS_READER = (
    "import re, sys, ingestkit\n"
    "reader = getattr(ingestkit, sys.argv[1])(sys.argv[2], **eval(sys.argv[3]))\n"
    "n = sum(1 for _ in reader.entries())\n"
    "status = open('/proc/self/status').read()\n"
    "print(n, re.search(r'VmHWM:\\s*(\\d+)', status).group(1))\n"
)


def reader_rss(rows: int) -> list[str]:
    """Peak RSS of a process reading a file of ``rows`` and of 4x ``rows`` records."""
    lines = []
    writers = (
        ("read_xlsx", "xlsx", write_xlsx, "{}"),
        ("read_parquet", "parquet", write_parquet, "{}"),
        ("read_json", "json", write_nested_json, "{'at': 'data.items'}"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, ext, write, kwargs in writers:
            peaks = []
            for size in (rows, rows * 4):
                path = Path(tmp) / f"{size}.{ext}"
                write(path, size)
                done = subprocess.run(
                    [sys.executable, "-c", RSS_READER, name, str(path), kwargs],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                n, peak = done.stdout.split()
                assert int(n) == size, (name, n, size)
                mb = path.stat().st_size / 2**20
                peaks.append(int(peak) / 1024)
                print(f"  {name:<13} {size:>9,} records ({mb:7.1f} MB file): {peaks[-1]:6.1f} MB")
            lines.append(
                f"{f'{name}: peak RSS 4x / 1x records':<49}{peaks[1] / peaks[0]:6.2f}x   [~1x]"
            )
    return lines


def _numprocesses_list(value: str) -> list[int]:
    try:
        ns = [int(n) for n in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2,4,8, got {value!r}") from None
    if not ns or min(ns) < 1:
        raise argparse.ArgumentTypeError("expected 1 or more workers per run")
    return ns


SECTIONS = (
    "flights",
    "dirty",
    "constraints",
    "overhead",
    "memory",
    "workers",
    "upsert",
    "typed",
    "history",
    "files",
    "joined",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("INGESTKIT_BENCH_DSN") or os.environ.get("INGESTKIT_TEST_DSN"),
        help="server to create benchmark databases on",
    )
    parser.add_argument(
        "--rows", type=int, default=336_776, help="flights rows (default: as nycflights13)"
    )
    parser.add_argument("--naive-rows", type=int, default=5_000, help="rows for the per-row script")
    parser.add_argument(
        "--million", type=int, default=1_000_000, help="records for the trivial processor"
    )
    parser.add_argument("--pytest-tests", type=int, default=20_000)
    parser.add_argument(
        "--api-items",
        type=int,
        default=20_000,
        help="items for the processor that waits 2 ms per item (workers section)",
    )
    parser.add_argument(
        "--api-n",
        type=_numprocesses_list,
        default=[1, 2, 4, 8],
        metavar="N,N,...",
        help="-n values for the 2 ms processor (default: 1,2,4,8)",
    )
    parser.add_argument(
        "--workers-rows",
        type=int,
        default=100_000,
        help="flights rows in the workers section (default: 100,000)",
    )
    parser.add_argument(
        "--flights-n",
        type=_numprocesses_list,
        default=[1, 2],
        metavar="N,N,...",
        help="-n values for the flights job (default: 1,2)",
    )
    parser.add_argument(
        "--upsert-rows", type=int, default=200_000, help="rows for the upsert and typed sections"
    )
    parser.add_argument(
        "--history-rows",
        type=int,
        default=100_000,
        help="flights rows in the history section (default: 100,000)",
    )
    parser.add_argument(
        "--files", type=int, default=1_000, help="files in the folder of drops (files section)"
    )
    parser.add_argument(
        "--files-rows", type=int, default=300_000, help="rows in all the drops (files section)"
    )
    parser.add_argument(
        "--reader-rows",
        type=int,
        default=100_000,
        help="rows of the xlsx/parquet/json files of the files section (default: 100,000)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section, repeatable ({', '.join(SECTIONS)}); default: all",
    )
    args = parser.parse_args()
    # Worker processes start as they do after a normal install, from cached
    # bytecode (some sandboxes set PYTHONDONTWRITEBYTECODE, which makes every
    # start compile ingestkit anew: about 50 ms of CPU per worker here).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    if not args.dsn:
        raise SystemExit(
            "give --dsn (or INGESTKIT_BENCH_DSN / INGESTKIT_TEST_DSN): a server for databases"
        )
    only = set(args.only or SECTIONS)

    print(
        f"ingestkit {ingestkit.__version__} benchmarks, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
        f"{os.cpu_count()} cores (load {os.getloadavg()[0]:.2f}), "
        f"server {psycopg2.extensions.parse_dsn(args.dsn).get('host')}"
    )
    ratios: list[str] = []
    if "flights" in only:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "flights.csv"
            bad = flights.write_csv(path, args.rows)
            print(f"\nflights: {args.rows:,} rows, 3 dimension lookups per row, {bad:,} bad rows")
            with database(args.dsn) as dsn:
                ceiling = copy_ceiling(dsn, path, args.rows)
            with database(args.dsn) as dsn:
                hand = hand_written(dsn, path, args.rows)
            with database(args.dsn) as dsn:
                naive = naive_script(dsn, path, args.naive_rows)
            with database(args.dsn) as dsn:
                ours = ingestkit_flights(dsn, path, args.rows, bad)
        ratios += [
            f"ingestkit / hand-written execute_values loader   {ours / hand:6.2f}x   [>= 0.5x]",
            f"ingestkit / naive per-row script                 {ours / naive:6.1f}x",
            f"ingestkit / COPY ceiling                         {ours / ceiling:6.3f}x",
        ]

    if "dirty" in only:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "dirty.csv"
            bad = flights.write_csv(path, args.rows, bad_every=0, missing=0.17)
            print(
                f"\ndirty flights: {args.rows:,} rows, {bad:,} ({bad / args.rows:.0%}) missing"
                " a dimension; ingestkit's lookups lazy (no preload)"
            )
            with database(args.dsn) as dsn, CpuMeter(dsn) as hand_cpu:
                hand = hand_written(dsn, path, args.rows)
            print(hand_cpu.show())
            with database(args.dsn) as dsn, CpuMeter(dsn) as our_cpu:
                ours = ingestkit_flights(
                    dsn,
                    path,
                    args.rows,
                    bad,
                    name="ingestkit: lazy lookups, db.insert, every outcome",
                    pipeline=DIRTY_PIPELINE,
                )
            print(our_cpu.show())
        ratios.append(
            f"dirty: ingestkit / hand-written loader            {ours / hand:6.2f}x   [>= 1.0x]"
            + cpu_ratio(hand_cpu, our_cpu)
        )

    if "constraints" in only:
        print(f"\nconstraint violations: {args.rows:,} rows into a table with a CHECK constraint")
        seconds: dict[float, float] = {}
        cpu_seconds: dict[float, float | None] = {}
        for share in (0.0, 0.01, 0.10, 0.30):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "checked.csv"
                bad = flights.write_csv(path, args.rows, bad_every=0, negative=share)
                with database(args.dsn) as dsn, CpuMeter(dsn) as hand_cpu:
                    hand = hand_written_checked(
                        dsn, path, args.rows, f"hand-written, a savepoint per page: {share:.0%} bad"
                    )
                print(hand_cpu.show())
                with database(args.dsn) as dsn, CpuMeter(dsn) as our_cpu:
                    ours = ingestkit_flights(
                        dsn,
                        path,
                        args.rows,
                        bad,
                        name=f"ingestkit: db.insert, {share:.0%} rejected by the table",
                        pipeline=CHECKED_PIPELINE,
                        table="flights_checked",
                    )
                print(our_cpu.show())
                seconds[share] = args.rows / ours
                cpu_seconds[share] = our_cpu.total
            ratios.append(
                f"{f'constraints {share:.0%}: ingestkit / hand-written':<49}{ours / hand:6.2f}x"
                "   [>= 1.0x]" + cpu_ratio(hand_cpu, our_cpu)
            )

        def failing_share(at0: float, at10: float) -> float:
            """A failing item's cost over a succeeding one's, from the 0% and 10% runs."""
            good = at0 / args.rows
            return (at10 - 0.9 * args.rows * good) / (0.1 * args.rows) / good

        by_cpu = ""
        if cpu_seconds[0.0] is not None and cpu_seconds[0.10] is not None:
            by_cpu = (
                f"   (by CPU seconds: {failing_share(cpu_seconds[0.0], cpu_seconds[0.10]):.2f}x)"
            )
        ratios.append(
            "a failing item / a succeeding one, 10% bad       "
            f"{failing_share(seconds[0.0], seconds[0.10]):6.2f}x   [<= 2x]" + by_cpu
        )

    if "overhead" in only:
        print(f"\nframework overhead: {args.million:,} records, a processor that does nothing")
        pytest_rate = pytest_trivial(args.pytest_tests)
        trivial, lf_share = ingestkit_trivial(args.dsn, args.million)
        ratios += [
            f"trivial processor / pytest per-item rate         {trivial / pytest_rate:6.1f}x"
            "   [>= 20x, >= 50,000/s]",
            f"--lf over 1% / full run time                     {lf_share:6.1%}   [< 5%]",
        ]

    if "memory" in only:
        print("\nmemory: peak RSS of a whole ingestkit process")
        small = peak_rss_mb(args.dsn, args.million // 10)
        large = peak_rss_mb(args.dsn, args.million)
        print(f"  {args.million // 10:>9,} records: {small:6.1f} MB")
        print(f"  {args.million:>9,} records: {large:6.1f} MB")
        ratios.append(
            f"peak RSS {args.million:,} / {args.million // 10:,} records"
            f"        {large / small:6.2f}x   [<= 1.3x, < 150 MB]"
        )

    if "workers" in only:
        print(
            "\nworkers: one process against -n N worker processes "
            "(each run: a fresh folder and database)"
        )
        api = workers_api(args.dsn, args.api_items, args.api_n)
        on = workers_flights(args.dsn, args.workers_rows, args.flights_n)
        for what, rates, goal in (("2 ms wait", api, "   [>= 6x]"), ("flights", on, "")):
            most = max(rates)
            ratios.append(
                f"{f'{what}, -n {most} / one process':<49}{rates[most] / rates[0]:6.2f}x"
                + (goal if most == 8 else "")
            )
            if 1 in rates and most != 1:
                ratios.append(f"{f'{what}, -n {most} / -n 1':<49}{rates[most] / rates[1]:6.2f}x")

    if "upsert" in only:
        print(f"\nupsert: {args.upsert_rows:,} rows, db.upsert against execute_values ON CONFLICT")
        ratios += upserts(args.dsn, args.upsert_rows)

    if "typed" in only:
        print(f"\ntyped records: {args.upsert_rows:,} rows, a dataclass record against a dict")
        ratios += typed_overhead(args.dsn, args.upsert_rows)

    if "history" in only:
        print(f"\nhistory: bookkeeping bytes after the flights job over {args.history_rows:,} rows")
        items, latest = history_bytes(args.dsn, args.history_rows)
        ratios += [
            f"ingestkit.items bytes per outcome row            {items:6.1f}   [<= 150]",
            f"ingestkit.latest bytes per key                   {latest:6.1f}",
        ]

    if "files" in only:
        print(
            f"\nfiles: a folder of {args.files:,} CSV drops ({args.files_rows:,} rows), "
            "then read_xlsx / read_parquet / read_json(at=)"
        )
        ratios += files_folder(args.dsn, args.files, args.files_rows)
        ratios += reader_throughput(args.reader_rows)
        ratios += reader_rss(args.reader_rows // 4)

    if "joined" in only:
        print(
            "\njoined: -n 1 plus J `ingestkit worker --batch` processes on the 2 ms processor,"
            f" {args.api_items:,} items"
        )
        for joined in (1, 3, 7):
            workers_joined(args.dsn, args.api_items, joined)

    print("\nratios (goal in brackets)")
    for line in ratios:
        print(f"  {line}")


if __name__ == "__main__":
    main()
