"""Folders of files under ``-n`` and after a crash: split by file, resumed by file.

Under ``-n`` each file of a glob read in full is one task: a worker reads the
whole file itself, so the leader is not the one reader of every record
(issue #17), and commits it chunk by chunk with the task's progress, so a
worker killed inside a file is followed by the next from its last committed
chunk on. A file's ledger row commits with its last items, so a run that is
killed is resumed by the next from the first file not recorded (issue #20).
"""

from __future__ import annotations

import signal
import time

import pytest

PIPELINE = """
import os
import signal
import time

import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, name text NOT NULL)")

@ingestkit.source(ingestkit.read_csv("drops/*.csv"), key="id")
def process_row(record, db):
    if record["name"] == "kill" and not os.path.exists("killed"):
        open("killed", "w").close()
        os.kill(KILLED, signal.SIGKILL)
    db.insert("t", {"id": int(record["id"]), "name": record["name"]})
"""

#: Notes which process reads each file (the reader of every test run here).
READS = """
import sys

from ingestkit import readers

_read_file = readers.read_csv.read_file

def read_file(self, raw, path, key):
    role = "worker" if "--worker" in sys.argv or "worker" in sys.argv else "leader"
    note(role, path)
    yield from _read_file(self, raw, path, key)

readers.read_csv.read_file = read_file
"""


def pipeline(killed: str = "os.getpid()") -> str:
    return PIPELINE.replace("KILLED", killed)


def drop(project, name: str, ids: range, kill_at: int | None = None) -> None:
    rows = "".join(f"{i},{'kill' if i == kill_at else f'n{i}'}\n" for i in ids)
    project.write(f"drops/{name}", "id,name\n" + rows)


def ledger(project) -> dict[str, tuple]:
    rows = project.query("SELECT path, items, status FROM ingestkit.files ORDER BY path")
    return {r["path"]: (r["items"], r["status"]) for r in rows}


def assert_accounted(project, records: int) -> None:
    """Every record of the source is one outcome of the (last) batch, and every
    succeeded one, and only those, has its row in the target table."""
    counts = project.scalar("SELECT counts FROM ingestkit.batches ORDER BY started_at DESC LIMIT 1")
    assert sum(counts.values()) == records, counts
    outcomes = project.query(
        "SELECT status, count(*) AS n FROM ingestkit.items WHERE batch_id ="
        " (SELECT id FROM ingestkit.batches ORDER BY started_at DESC LIMIT 1) GROUP BY status"
    )
    by_status = {r["status"]: r["n"] for r in outcomes}
    assert sum(by_status.values()) + counts.get("unchanged", 0) == records, by_status
    assert project.scalar("SELECT count(*) FROM t") == by_status.get("succeeded", 0)


def succeeded_twice(project) -> list[str]:
    rows = project.query(
        "SELECT key FROM ingestkit.items WHERE status = 'succeeded' "
        "GROUP BY processor, key HAVING count(*) > 1"
    )
    return [r["key"] for r in rows]


def test_workers_read_the_files_themselves(project, events):
    for n in range(4):
        drop(project, f"d{n}.csv", range(n * 100, n * 100 + 100))
    project.write("ingest_x.py", pipeline())
    project.write_noted("conftest.py", READS)  # (it patches the reader: run in subprocesses)
    result = project.cli("-n", "2")
    assert result.returncode == 0, result.stdout
    readers = events()
    assert sorted(readers) == sorted(f"worker drops/d{n}.csv" for n in range(4)), readers
    assert project.scalar("SELECT count(*) FROM t") == 400
    assert_accounted(project, 400)
    assert set(ledger(project).values()) == {(100, "complete")}
    again = project.cli("-n", "2")
    assert again.returncode == 0, again.stdout
    assert "4 files skipped" in again.stdout
    assert len(events()) == 4  # none parsed again


def test_a_key_in_two_files_runs_once_under_workers(project):
    drop(project, "a.csv", range(1, 201))
    drop(project, "b.csv", range(200, 301))  # 200 is in both
    project.write("ingest_x.py", pipeline())
    result = project.run("-n", "2")
    assert result.exit_code == 1, result.output
    assert project.scalar("SELECT count(*) FROM t") == 300
    dup = [i for i in result.items if i["status"] == "failed"]
    assert [(d["key"], d["error_type"]) for d in dup] == [("200", "DuplicateKey")]
    other = "drops/a.csv:201" if "b.csv" in dup[0]["location"] else "drops/b.csv:2"
    assert other in dup[0]["error_message"], dup[0]
    assert "the same content as" in dup[0]["error_message"]
    assert succeeded_twice(project) == []
    assert_accounted(project, 301)


def test_a_killed_worker_s_file_is_taken_on_from_its_last_committed_chunk(project):
    drop(project, "big.csv", range(1, 601), kill_at=300)
    project.write("ingest_x.py", pipeline())
    done = project.cli("-n", "2", "--chunk-size", "25")
    assert "killed by signal 9" in done.stdout, done.stdout
    assert project.scalar("SELECT count(*) FROM t") == 600
    assert succeeded_twice(project) == []
    counts = project.scalar("SELECT counts FROM ingestkit.batches")
    # the next worker did not read what the killed one committed as "unchanged" again
    assert counts["succeeded"] == 600 and counts["unchanged"] == 0, counts
    assert_accounted(project, 600)
    assert ledger(project) == {"drops/big.csv": (600, "complete")}


def test_a_killed_run_resumes_at_the_first_file_not_recorded(project):
    drop(project, "a.csv", range(0, 100))
    drop(project, "b.csv", range(100, 200))
    drop(project, "c.csv", range(200, 300), kill_at=250)
    project.write("ingest_x.py", pipeline())
    killed = project.cli("--chunk-size", "10")
    assert killed.returncode == -signal.SIGKILL, killed.stdout
    assert ledger(project) == {"drops/a.csv": (100, "complete"), "drops/b.csv": (100, "complete")}
    again = project.cli()
    assert again.returncode == 0, again.stdout
    assert "2 files skipped" in again.stdout, again.stdout
    assert project.scalar("SELECT count(*) FROM t") == 300
    assert succeeded_twice(project) == []


@pytest.mark.slow
def test_a_killed_leader_is_replaced_without_reading_the_recorded_files_again(project):
    drop(project, "a.csv", range(0, 100))
    drop(project, "b.csv", range(100, 200))
    drop(project, "c.csv", range(200, 300), kill_at=250)
    drop(project, "d.csv", range(300, 400))
    project.write("ingest_x.py", pipeline(killed="os.getppid()"))  # the leader
    killed = project.cli("-n", "1", "--chunk-size", "10")
    assert killed.returncode == -signal.SIGKILL, killed.stdout
    recorded = ledger(project)
    assert recorded["drops/a.csv"] == (100, "complete")
    assert recorded["drops/b.csv"] == (100, "complete")
    again = project.cli("-n", "1")
    assert again.returncode == 0, again.stdout
    assert "files skipped" in again.stdout, again.stdout
    assert project.scalar("SELECT count(*) FROM t") == 400
    assert succeeded_twice(project) == []
    assert set(ledger(project).values()) == {(100, "complete")}


SLOW = """
import os
import time

import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, pid int NOT NULL)")

@ingestkit.source(ingestkit.read_csv("drops/*.csv"), key="id")
def process_row(record, db):
    time.sleep(0.005)
    db.insert("t", {"id": int(record["id"]), "pid": os.getpid()})
"""

#: In the joined worker's folder: the files are not on "its machine" (the leader's
#: relative paths do not reach them from this folder either).
ELSEWHERE = """
import os
import types

import ingestkit.worker

elsewhere = types.ModuleType("os")
elsewhere.__dict__.update(os.__dict__)
elsewhere.path = types.SimpleNamespace(isfile=lambda p: "drops" not in str(p))
ingestkit.worker.os = elsewhere
"""


@pytest.mark.slow
def test_a_worker_on_another_machine_leaves_the_files_it_cannot_see(project, tmp_path):
    for n in range(6):
        drop(project, f"d{n}.csv", range(n * 100, n * 100 + 100))
    project.write("ingest_x.py", SLOW)
    project.run("-k", "nothing")  # the schema exists before the leader starts
    leader = project.spawn("-n", "1")
    deadline, batch = time.time() + 30, None
    while batch is None and time.time() < deadline:
        batch = project.scalar(
            "SELECT b.id::text FROM ingestkit.batches b JOIN ingestkit.dispatch d"
            " ON d.batch_id = b.id WHERE b.status = 'running'"
        )
        time.sleep(0.05)
    assert batch, "the leader did not start its batch"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ingest_x.py").write_text(SLOW)
    (elsewhere / "conftest.py").write_text(ELSEWHERE)
    joined = project.spawn("worker", "--batch", batch[:8], cwd=elsewhere)
    out, _ = leader.communicate(timeout=120)
    joined_out, _ = joined.communicate(timeout=60)
    assert leader.returncode == 0, out
    assert joined.returncode == 0, joined_out
    assert project.scalar("SELECT count(*) FROM t") == 600
    assert project.scalar("SELECT count(*) FROM t WHERE pid = %s", (joined.pid,)) == 0
    assert not project.query("SELECT 1 FROM ingestkit.items WHERE status <> 'succeeded'")
    assert set(ledger(project).values()) == {(100, "complete")}
