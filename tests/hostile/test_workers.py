"""Hostile conditions for a batch shared by workers (``-n N``, ``ingestkit worker --batch``).

SPEC §3: every item commits exactly once with its outcome row; a run that dies is
marked ``interrupted`` by the next run without waiting for a timeout, and a rerun
resumes where it left off. §4: exit codes (2 interrupted, 4 usage error in one
line). docs/workers.md ("When a worker dies", "Fixtures"): a killed worker's chunk
goes back to the queue and the leader names it; a killed leader's workers finish
the chunk they hold and exit; a worker's fixture teardown error reaches the
leader's summary. A SIGKILL or a dropped connection can hit the leader or any
worker at any instant, and no key is ever processed twice.

The target table ``t`` has no primary key on purpose: an item committed twice
shows up as a duplicate row instead of a constraint violation.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from ingestkit.dispatch import WORKER_NAMESPACE

N = 400

#: Each item sleeps a little (``IK_SLEEP`` seconds when set: reruns go at full speed)
#: so that a signal sent once some items are committed lands mid-run.
PIPELINE = """
import os
import time

import ingestkit


@ingestkit.source(range(1, COUNT + 1), key=str)
def process_n(record, db):
    time.sleep(float(os.environ.get("IK_SLEEP", SLEEP)))
    FAIL
    db.insert("t", {"id": record, "pid": os.getpid()})
"""

FAST = {"IK_SLEEP": "0"}


#: With ``fail_every=100``: the items that fail.
FAILING_KEYS = [100, 200, 300, 400]


def write_pipeline(project, sleep: float = 0.003, n: int = N, fail_every: int = 0) -> None:
    fail = "pass"
    if fail_every:
        fail = (
            f"if record % {fail_every} == 0:\n"
            '        raise ValueError(f"{record} is a round number")'
        )
    text = PIPELINE.replace("SLEEP", repr(sleep)).replace("COUNT", str(n)).replace("FAIL", fail)
    project.write("ingest_x.py", text)
    # which worker process (pid) and connection (backend) committed the row
    project.query(
        "CREATE TABLE IF NOT EXISTS t"
        " (id int NOT NULL, pid int, backend int DEFAULT pg_backend_pid())"
    )


# -- processes ---------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # state, ppid, ...


def alive(pid: int) -> bool:
    """Running (an exited child nobody reaped yet is a zombie, not alive)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and int(stat[1]) == pid and alive(int(entry)):
                found.append(int(entry))
    return sorted(found)


def wait_until(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"{what} not met after {timeout} s")


_started: list[int] = []
_leaders: list = []


@pytest.fixture(autouse=True)
def _no_process_left_behind(project):
    """A failing test must not leave its leader or workers running."""
    yield
    for pid in reversed(_started):
        try:
            ours = b"ingestkit" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if ours and alive(pid):  # not a later process that got the same pid
            os.kill(pid, signal.SIGKILL)
    for proc in _leaders:
        proc.wait()
        proc.stdout.close()
    _started.clear()
    _leaders.clear()


def spawn(project, *args, **kwargs):
    proc = project.spawn(*args, **kwargs)
    _started.append(proc.pid)
    _leaders.append(proc)
    return proc


def workers_of(leader, count: int) -> list[int]:
    """The pids of the leader's ``count`` worker processes, once all are started."""
    pids = wait_until(
        lambda: pids if len(pids := children(leader.pid)) == count else None,
        what=f"{count} workers of pid {leader.pid}",
    )
    _started.extend(pids)
    return pids


def finish(proc, timeout: float = 60) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output, output
    assert "INTERNAL ERROR" not in output, output


# -- the database ------------------------------------------------------------


def succeeded_keys(project) -> list[int]:
    return sorted(
        int(r["key"])
        for r in project.query("SELECT key FROM ingestkit.items WHERE status = 'succeeded'")
    )


def target_ids(project) -> list[int]:
    return [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")]


def assert_consistent(project) -> int:
    """Each key succeeded at most once, and has a row in t exactly when it did."""
    keys = succeeded_keys(project)
    assert len(keys) == len(set(keys)), "a key succeeded twice"
    ids = target_ids(project)
    assert len(ids) == len(set(ids)), "a key was written twice"
    assert keys == ids
    return len(keys)


def assert_exact(project, n: int = N, skip=()) -> None:
    """Every key (but ``skip``) succeeded exactly once, with exactly one row in t."""
    assert_consistent(project)
    assert target_ids(project) == [i for i in range(1, n + 1) if i not in skip]


def assert_queue_empty(project) -> None:
    for table in ("tasks", "results", "dispatch"):
        assert project.scalar(f"SELECT count(*) FROM ingestkit.{table}") == 0, table


def summary_counts(output: str) -> str:
    """The closing summary line's counts, e.g. '400 succeeded'."""
    lines = [line for line in output.splitlines() if re.match(r"^=+ .* in [\d.]+s", line)]
    assert lines, output
    return lines[-1].strip("= ").rsplit(" in ", 1)[0]


def batch_rows(project) -> list[dict]:
    return project.query(
        "SELECT id, status, exit_code, counts FROM ingestkit.batches ORDER BY started_at"
    )


def committed_by(project, pid: int) -> int:
    return project.scalar("SELECT count(*) FROM t WHERE pid = %s", (pid,))


def chunk_backend(project, worker: int) -> int:
    """The backend of ``worker``'s chunk connection, once it has committed a row."""
    return wait_until(
        lambda: project.scalar("SELECT min(backend) FROM t WHERE pid = %s", (worker,)),
        what=f"worker {worker} committed",
    )


def in_transaction(project, backend: int) -> bool:
    """The backend is inside a transaction: for a worker's chunk connection, a claimed task."""
    return bool(
        project.scalar(
            "SELECT xact_start IS NOT NULL FROM pg_stat_activity WHERE pid = %s", (backend,)
        )
    )


# -- a worker dies -----------------------------------------------------------


@pytest.mark.slow
def test_sigkill_one_worker_mid_run(project):
    write_pipeline(project, fail_every=100)
    leader = spawn(project, "-n", "3")
    pids = workers_of(leader, 3)
    victim = pids[1]
    chunk = chunk_backend(project, victim)
    wait_until(lambda: in_transaction(project, chunk), what="the victim inside a chunk")
    os.kill(victim, signal.SIGKILL)  # its claimed task goes back to the queue
    out = finish(leader)

    assert leader.returncode == 1, out  # as the items dictate: some failed
    assert_no_traceback(out.split("FAILURES")[0])
    assert summary_counts(out) == f"{N - 4} succeeded, 4 failed"
    assert_exact(project, skip=FAILING_KEYS)
    failed = project.query(
        "SELECT key, error_message FROM ingestkit.items WHERE status = 'failed' ORDER BY key::int"
    )
    assert failed == [
        {"key": str(k), "error_message": f"{k} is a round number"} for k in FAILING_KEYS
    ]
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == N
    assert batch_rows(project)[0]["counts"] == {
        "succeeded": N - 4,
        "failed": 4,
        "error": 0,
        "skipped": 0,
        "unchanged": 0,
    }
    assert_queue_empty(project)


@pytest.mark.slow
def test_leader_notes_a_killed_worker(project):
    write_pipeline(project, n=200)
    leader = spawn(project, "-n", "2")
    pids = workers_of(leader, 2)
    victim = pids[0]
    wait_until(lambda: committed_by(project, victim) > 0, what="the victim worked")
    os.kill(victim, signal.SIGKILL)
    out = finish(leader)
    assert leader.returncode == 0, out
    assert_exact(project, 200)
    assert re.search(rf"worker \d \(pid {victim}\) was killed by signal 9", out), out


@pytest.mark.slow
def test_sigkill_every_worker_stops_the_leader(project):
    """With nobody left to run the queue, the leader says so and stops (no hang)."""
    write_pipeline(project)
    leader = spawn(project, "-n", "2")
    pids = workers_of(leader, 2)
    project.wait_for_items(60)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    out = finish(leader, timeout=30)

    assert leader.returncode == 2, out
    assert "every worker exited" in out, out
    assert_no_traceback(out)
    done = assert_consistent(project)
    assert 0 < done < N
    assert summary_counts(out) == f"{done} succeeded"
    assert batch_rows(project)[0]["status"] == "interrupted"

    again = project.cli("-n", "2", env=FAST)
    assert again.returncode == 0, again.stdout
    assert summary_counts(again.stdout) == f"{N - done} succeeded, {done} unchanged"
    assert_exact(project)
    assert_queue_empty(project)


# -- the leader dies ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("rerun", ["-n", "single"])
def test_sigkill_leader_mid_run(project, monkeypatch, rerun):
    write_pipeline(project)
    leader = spawn(project, "-n", "2")
    pids = workers_of(leader, 2)
    project.wait_for_items(60)
    leader.kill()
    # the workers see the leader's lock go and leave on their own
    wait_until(lambda: not any(alive(p) for p in pids), timeout=5, what="workers exited")
    finish(leader, timeout=5)  # the output pipe closes once the workers are gone
    done = assert_consistent(project)
    assert done < N

    looked = project.cli("--batches")
    assert looked.returncode == 0, looked.stdout
    assert "interrupted" in looked.stdout, looked.stdout
    assert [b["status"] for b in batch_rows(project)] == ["interrupted"]

    if rerun == "-n":
        again = project.cli("-n", "2", env=FAST)
        assert again.returncode == 0, again.stdout
        assert summary_counts(again.stdout) == f"{N - done} succeeded, {done} unchanged"
    else:
        monkeypatch.setenv("IK_SLEEP", "0")
        result = project.run()
        assert result.exit_code == 0, result.output
        assert result.counts == {"succeeded": N - done, "unchanged": done}
    assert_exact(project)
    assert [b["status"] for b in batch_rows(project)] == ["interrupted", "finished"]
    assert_queue_empty(project)


@pytest.mark.slow
def test_rerun_right_after_the_leader_dies_waits_for_its_workers(project):
    write_pipeline(project, sleep=0.01, n=200)
    leader = spawn(project, "-n", "2", "--chunk-size", "30")
    pids = workers_of(leader, 2)
    project.wait_for_items(30)
    leader.kill()
    leader.wait()
    try:
        again = project.cli(env=FAST)  # at once: the workers are still inside a task
    finally:
        wait_until(lambda: not any(alive(p) for p in pids), timeout=10, what="workers exited")
        finish(leader, timeout=5)
    assert again.returncode == 0, again.stdout
    assert_exact(project, 200)


def test_workers_stop_taking_tasks_once_the_leader_is_gone(project):
    write_pipeline(project, sleep=0.02, n=200)
    leader = spawn(project, "-n", "1", "--chunk-size", "20")  # 0.4 s a task, 4 queued
    [worker] = workers_of(leader, 1)
    project.wait_for_items(20)
    leader.kill()
    leader.wait()
    wait_until(lambda: not alive(worker), timeout=1.0, what="the worker left")
    assert_consistent(project)


# -- Ctrl-C ------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_to_the_process_group(project):
    write_pipeline(project)
    leader = spawn(project, "-n", "2", start_new_session=True)
    pids = workers_of(leader, 2)
    project.wait_for_items(60)
    os.killpg(leader.pid, signal.SIGINT)  # as a terminal's Ctrl-C: leader and workers
    out = finish(leader, timeout=30)

    assert leader.returncode == 2, out
    assert "Ctrl-C" in out, out
    assert_no_traceback(out)
    assert not any(alive(p) for p in pids)
    [batch] = batch_rows(project)
    assert batch["status"] == "interrupted" and batch["exit_code"] == 2
    done = assert_consistent(project)
    assert 0 < done < N
    # what the leader reported is exactly what was committed, each item once
    assert summary_counts(out) == f"{done} succeeded"
    recorded = project.query(
        "SELECT status, count(*) AS n, count(DISTINCT key) AS keys FROM ingestkit.items"
        " GROUP BY status"
    )
    assert recorded == [{"status": "succeeded", "n": done, "keys": done}]
    assert {k: v for k, v in batch["counts"].items() if v} == {"succeeded": done}
    assert_queue_empty(project)

    again = project.cli("-n", "2", env=FAST)
    assert again.returncode == 0, again.stdout
    assert summary_counts(again.stdout) == f"{N - done} succeeded, {done} unchanged"
    assert_exact(project)


# -- a worker's connection is dropped ----------------------------------------


def terminate_worker_connection(project, which: str) -> tuple:
    """Start ``-n 3``; once a worker is inside a chunk, terminate one of its connections."""
    write_pipeline(project)
    leader = spawn(project, "-n", "3")
    victim = workers_of(leader, 3)[0]
    chunk = chunk_backend(project, victim)
    wait_until(lambda: in_transaction(project, chunk), what="the victim inside a chunk")
    if which == "chunk":
        backend = chunk
    else:  # a worker's control connection holds its shared lock on the batch
        backend = project.scalar(
            "SELECT min(l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE d.datname = current_database() AND l.locktype = 'advisory'"
            " AND l.granted AND l.mode = 'ShareLock' AND l.classid = %s::oid",
            (WORKER_NAMESPACE,),
        )
    project.query("SELECT pg_terminate_backend(%s, 5000)", (backend,))
    return leader, finish(leader)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["chunk", "control"])
def test_worker_connection_terminated(project, which):
    leader, out = terminate_worker_connection(project, which)
    assert leader.returncode == 0, out
    assert summary_counts(out) == f"{N} succeeded"
    assert_exact(project)
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == N
    assert_queue_empty(project)


@pytest.mark.slow
def test_worker_losing_its_control_connection_leaves_without_a_traceback(project):
    leader, out = terminate_worker_connection(project, "control")
    assert leader.returncode == 0, out
    assert_no_traceback(out)


# -- joining a batch ---------------------------------------------------------


def running_batch(project) -> str:
    def find():
        try:
            return project.scalar("SELECT id FROM ingestkit.batches WHERE status = 'running'")
        except Exception:
            return None  # the schema is being created

    return str(wait_until(find, what="a running batch"))


@pytest.mark.slow
def test_joined_worker_killed_mid_run(project):
    write_pipeline(project)
    leader = spawn(project, "-n", "1")
    batch = running_batch(project)
    joined = spawn(project, "worker", "--batch", batch[:8])
    wait_until(lambda: committed_by(project, joined.pid) > 0, what="the joined worker worked")
    joined.kill()
    joined.wait()
    out = finish(leader)
    assert leader.returncode == 0, out
    assert summary_counts(out) == f"{N} succeeded"
    assert_exact(project)
    assert_queue_empty(project)


@pytest.mark.slow
def test_worker_started_in_another_folder(project, tmp_path):
    """A worker that does not have the batch's processors gives its task back and says why."""
    write_pipeline(project, n=300)
    other = tmp_path / "other"
    other.mkdir()
    (other / "ingestkit.toml").write_text("")
    (other / "ingest_y.py").write_text(
        "import ingestkit\n\n@ingestkit.source([1], key=str)\ndef process_y(record):\n    pass\n"
    )
    leader = spawn(project, "-n", "1")
    batch = running_batch(project)
    stray = project.cli("worker", "--batch", batch[:8], cwd=other)
    out = finish(leader)

    assert stray.returncode == 4, stray.stdout
    assert "has no processor ingest_x.py::process_n" in stray.stdout, stray.stdout
    assert stray.stdout.startswith("ERROR: "), stray.stdout  # before any header
    assert_no_traceback(stray.stdout)
    assert leader.returncode == 0, out
    assert summary_counts(out) == "300 succeeded"
    assert_exact(project, 300)
    assert project.scalar("SELECT count(*) FROM ingestkit.items WHERE processor LIKE '%y'") == 0


# -- usage errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("worker", "--batch", "nonexistent"), id="unknown-batch"),
        pytest.param(("worker", "--batch", "00000000-0000-0000-0000-000000000000"), id="uuid"),
        pytest.param(("worker",), id="no-batch"),
    ],
)
def test_worker_usage_errors(project, args):
    write_pipeline(project, n=3)
    proc = project.cli(*args)
    assert proc.returncode == 4, proc.stdout
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("ERROR: ") and "batch" in lines[0], proc.stdout
    assert_no_traceback(proc.stdout)
    assert project.scalar("SELECT count(*) FROM t") == 0


def test_worker_for_a_finished_batch_is_a_usage_error(project):
    write_pipeline(project, n=3)
    assert project.cli("-n", "1").returncode == 0
    [batch] = batch_rows(project)
    proc = project.cli("worker", "--batch", str(batch["id"]))
    assert proc.returncode == 4, proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout
    assert "no running batch" in proc.stdout
    assert_no_traceback(proc.stdout)
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 3


# -- fixtures and failures in workers ----------------------------------------


def test_fixture_teardown_errors_in_workers_reach_the_summary(project):
    project.write(
        "ingest_x.py",
        """
import time
import ingestkit

@ingestkit.fixture(scope="batch")
def pool():
    yield "pool"
    raise RuntimeError("pool did not close cleanly")

@ingestkit.fixture(scope="processor")
def session_token():
    yield "token"
    raise ValueError("token was not revoked")

@ingestkit.source(range(1, 201), key=str)
def process_n(record, db, pool, session_token):
    time.sleep(0.002)
    db.insert("t", {"id": record})
""",
    )
    project.query("CREATE TABLE t (id int NOT NULL)")
    proc = project.cli("-n", "2")
    assert summary_counts(proc.stdout).startswith("200 succeeded"), proc.stdout
    assert_exact(project, 200)
    assert proc.returncode == 1, proc.stdout
    assert "TEARDOWN ERRORS" in proc.stdout, proc.stdout
    for line in (
        "batch-scoped fixture teardown: RuntimeError: pool did not close cleanly",
        "processor-scoped fixture teardown: ValueError: token was not revoked",
    ):
        assert line in proc.stdout, proc.stdout
    [batch] = batch_rows(project)
    assert batch["exit_code"] == 1 and batch["status"] == "finished"


FAILING = """
import time
import ingestkit

@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    time.sleep(0.002)
    if record["name"] == "bad":
        raise ValueError(f"name of {record['id']} is bad")
    db.insert("t", {"id": int(record["id"]), "name": record["name"]})
"""

FIXED = """
import time
import ingestkit

@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    time.sleep(0.002)
    name = "fixed" if record["name"] == "bad" else record["name"]
    db.upsert("t", {"id": int(record["id"]), "name": name}, conflict=("id",))
"""

#: Records the processor raises for, and ids already in t (a primary key violation).
BAD, TAKEN = {17, 123, 290}, {5, 150, 299}


@pytest.mark.slow
def test_failures_under_workers_and_last_failed(project):
    project.query(
        "CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL);"
        " INSERT INTO t VALUES (5, 'taken'), (150, 'taken'), (299, 'taken')"
    )
    rows = "".join(f"{i},{'bad' if i in BAD else f'n{i}'}\n" for i in range(1, 301))
    project.write("data/x.csv", "id,name\n" + rows)
    project.write("ingest_x.py", FAILING)
    proc = project.cli("-n", "3")
    assert proc.returncode == 1, proc.stdout
    assert summary_counts(proc.stdout) == "294 succeeded, 6 failed"
    # grouped by processor + exception type + message shape, as in a single run
    assert "ingest_x.py::process_row: ValueError (3 items)" in proc.stdout, proc.stdout
    assert "ingest_x.py::process_row: UniqueViolation (3 items)" in proc.stdout, proc.stdout
    assert "rerun the failures: ingestkit --lf" in proc.stdout
    failed = project.query(
        "SELECT key, error_type, error_message, count(*) OVER (PARTITION BY key) AS n"
        " FROM ingestkit.items WHERE status = 'failed' ORDER BY key::int"
    )
    assert [int(f["key"]) for f in failed] == sorted(BAD | TAKEN)
    assert all(f["n"] == 1 for f in failed)
    for f in failed:
        key = int(f["key"])
        if key in BAD:
            assert f["error_type"] == "ValueError"
            assert f["error_message"] == f"name of {key} is bad"
        else:
            assert f["error_type"] == "UniqueViolation"
            assert 'duplicate key value violates unique constraint "t_pkey"' in f["error_message"]
            assert f"Key (id)=({key}) already exists" in f["error_message"]
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 300
    assert project.scalar("SELECT count(DISTINCT key) FROM ingestkit.items") == 300
    assert project.scalar("SELECT count(*) FROM t") == 297
    assert project.scalar("SELECT count(*) FROM t WHERE name = 'taken'") == 3

    project.write("ingest_x.py", FIXED)
    again = project.cli("--lf", "-n", "2")
    assert again.returncode == 0, again.stdout
    assert summary_counts(again.stdout) == "6 succeeded"
    second = batch_rows(project)[1]["id"]
    rerun = project.query(
        "SELECT key, status FROM ingestkit.items WHERE batch_id = %s ORDER BY key::int", (second,)
    )
    assert rerun == [{"key": str(k), "status": "succeeded"} for k in sorted(BAD | TAKEN)]
    assert [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")] == list(range(1, 301))
    names = project.query(
        "SELECT id, name FROM t WHERE id = ANY(%s) ORDER BY id", (sorted(BAD | TAKEN),)
    )
    assert names == [
        {"id": k, "name": "fixed" if k in BAD else f"n{k}"} for k in sorted(BAD | TAKEN)
    ]
