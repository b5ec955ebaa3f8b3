"""Faults in ingestkit's own bookkeeping: the outcome writes, the batch's locks.

Whatever fails between an item's writes and its outcome row, the two commit
together or not at all (SPEC §3), a failure of the bookkeeping is never blamed on
the user's items, and a run that lost its lock stops writing before another run
can take its processors over (issue 11).
"""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

PIPELINE = """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    time.sleep(SLEEP)
    WRITE
"""

WRITES = {
    "insert": 'db.insert("t", {"id": int(record["id"])})',
    "execute": 'db.execute("INSERT INTO t (id) VALUES (%s)", (int(record["id"]),))',
}


def write_project(project, write: str = "insert", rows: int = 200, sleep: float = 0.005) -> None:
    project.write(
        "ingest_x.py",
        PIPELINE.replace("WRITE", WRITES[write]).replace("SLEEP", repr(sleep)),
    )
    project.write("data/x.csv", "id\n" + "".join(f"{i}\n" for i in range(1, rows + 1)))


def assert_exactly_once(project, rows: int | None = None) -> None:
    """Every row in the target has a succeeded item, and the other way round."""
    succeeded = {
        int(r["key"])
        for r in project.query(
            "SELECT DISTINCT key FROM ingestkit.items WHERE status = 'succeeded'"
        )
    }
    in_table = [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")]
    assert len(in_table) == len(set(in_table)), "rows written twice"
    assert set(in_table) == succeeded
    if rows is not None:
        assert succeeded == set(range(1, rows + 1))


def hold_lock(dsn: str, statement: str, seconds: float, started: threading.Event) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            started.set()
            time.sleep(seconds)
        conn.rollback()
    finally:
        conn.close()


def wait_for_rows(project, count: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if project.scalar("SELECT count(*) FROM ingestkit.items") >= count:
                return
        except psycopg2.Error:
            pass
        time.sleep(0.02)
    raise TimeoutError(count)


def lock_items_meanwhile(project, seconds: float) -> threading.Thread:
    started = threading.Event()
    locker = threading.Thread(
        target=hold_lock,
        args=(
            project.dsn,
            "LOCK TABLE ingestkit.outcomes IN ACCESS EXCLUSIVE MODE",
            seconds,
            started,
        ),
    )
    locker.start()
    started.wait(10)
    return locker


@pytest.mark.slow
@pytest.mark.parametrize("write", ["insert", "execute"])
def test_outcome_write_that_times_out_loses_nothing_and_blames_no_item(project, write):
    """A lock on ingestkit.items' rows (CREATE INDEX, VACUUM FULL) outlasts a
    statement_timeout."""
    write_project(project, write)
    dbname = project.scalar("SELECT current_database()")
    project.query(f"ALTER DATABASE \"{dbname}\" SET statement_timeout = '300ms'")
    proc = project.spawn("--chunk-size", "10")
    wait_for_rows(project, 20)
    locker = lock_items_meanwhile(project, 1.5)
    out, _ = proc.communicate(timeout=120)
    locker.join()
    # the batch stops: nothing of the lost chunk is in the tables, no item takes the blame
    assert proc.returncode == 2, out
    assert "INTERNAL ERROR" not in out and "Traceback" not in out, out
    assert "could not record the outcomes of a chunk of 10 items" in out, out
    assert "statement timeout" in out, out
    assert not project.query("SELECT 1 FROM ingestkit.items WHERE status <> 'succeeded'")
    assert_exactly_once(project)
    project.query(f'ALTER DATABASE "{dbname}" RESET statement_timeout')
    rerun = project.cli()
    assert rerun.returncode == 0, rerun.stdout
    assert_exactly_once(project, 200)


@pytest.mark.slow
def test_item_timeout_does_not_bound_the_outcome_write(project):
    """--item-timeout bounds the user's statements, not ingestkit's own bookkeeping."""
    write_project(project, "execute")
    proc = project.spawn("--chunk-size", "10", "--item-timeout", "0.3")
    wait_for_rows(project, 20)
    locker = lock_items_meanwhile(project, 1.5)
    out, _ = proc.communicate(timeout=120)
    locker.join()
    assert proc.returncode == 0, out
    assert_exactly_once(project, 200)


# -- the batch's locks ------------------------------------------------------

NO_KEY_PIPELINE = """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int)")  # no key: a double shows

@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    time.sleep(SLEEP)
    db.insert("t", {"id": int(record["id"])})
"""


def terminate(dsn: str, application_name: str) -> int:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (application_name,),
            )
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("history", [False, True], ids=["first-load", "with-history"])
def test_dead_control_connection_never_lets_a_second_run_double_the_rows(project, history):
    """The connection that holds the batch's locks is the one that commits."""
    project.write("ingest_x.py", NO_KEY_PIPELINE.replace("SLEEP", "0.01"))
    rows = 300
    if history:  # a processor with recorded outcomes reads its history per chunk
        project.write("data/x.csv", "id\n1\n")
        assert project.cli().returncode == 0
    project.write("data/x.csv", "id\n" + "".join(f"{i}\n" for i in range(1, rows + 1)))
    first = project.spawn("--chunk-size", "10")
    wait_for_rows(project, 30)
    assert terminate(project.dsn, "ingestkit-control") == 1
    second = project.spawn("--chunk-size", "10")
    out2, _ = second.communicate(timeout=120)
    out1, _ = first.communicate(timeout=120)
    assert "Traceback" not in out1 + out2, out1 + out2
    assert first.returncode in (0, 2), out1
    assert second.returncode == 0, out2
    assert_exactly_once(project)
    # a third run finishes whatever the first left
    assert project.cli().returncode == 0
    assert_exactly_once(project, rows)


@pytest.mark.slow
def test_idle_session_timeout_of_the_database_does_not_end_a_batch(project):
    """A DBA's idle timeouts must not end the connections that hold the batch's locks."""
    project.write("ingest_x.py", NO_KEY_PIPELINE.replace("SLEEP", "0.7"))
    project.write("data/x.csv", "id\n1\n")
    assert project.cli().returncode == 0  # history, so every chunk reads it
    project.write("data/x.csv", "id\n1\n2\n3\n4\n")
    dbname = project.scalar("SELECT current_database()")
    project.query(
        f"ALTER DATABASE \"{dbname}\" SET idle_session_timeout = '300ms';"
        f"ALTER DATABASE \"{dbname}\" SET idle_in_transaction_session_timeout = '300ms'"
    )
    result = project.cli("--chunk-size", "1")
    assert result.returncode == 0, result.stdout
    assert_exactly_once(project, 4)
    batch = project.query(
        "SELECT status, exit_code FROM ingestkit.batches ORDER BY started_at DESC LIMIT 1"
    )[0]
    assert batch == {"status": "finished", "exit_code": 0}


REJECTING = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY CHECK (id % 7 <> 0))")

@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    db.insert("t", {"id": int(record["id"])})
"""


@pytest.mark.slow
def test_rows_of_a_rejecting_table_wait_for_the_chunk_committing_before(project):
    """A table that rejected rows in one chunk goes straight to the row-by-row
    loader in the next: that loader must wait for the chunk still committing in the
    background, or two threads talk on one connection (seen: a hang for good)."""
    project.write("ingest_x.py", REJECTING)
    project.write("data/x.csv", "id\n" + "".join(f"{i}\n" for i in range(1, 301)))
    proc = project.spawn("--chunk-size", "10")
    wait_for_rows(project, 20)
    locker = lock_items_meanwhile(project, 1.0)  # the next commits are slow
    out, _ = proc.communicate(timeout=120)
    locker.join()
    assert proc.returncode == 1, out
    failed = {
        int(r["key"])
        for r in project.query("SELECT key FROM ingestkit.items WHERE status = 'failed'")
    }
    assert failed == set(range(7, 301, 7)), out
    assert_exactly_once(project)
