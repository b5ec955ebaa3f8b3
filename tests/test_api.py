"""SPEC §10: ``ingestkit.run(args, plugins=()) -> BatchResult``, and the recipes of
docs/scheduling.md that call it."""

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ingestkit

ROWS = """
import ingestkit

@ingestkit.source([{"id": i} for i in range(1, 21)], key="id")
def process_row(record, db):
    if record["id"] % 7 == 0:
        raise ValueError(f"multiple of 7: {record['id']}")
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES (%s)", (record["id"],))

@ingestkit.source([{"code": "x"}, {"nocode": 1}], key="code")
def process_keyless(record):
    pass
"""
SCHEDULING = Path(__file__).parent.parent / "docs" / "scheduling.md"


def test_run_returns_the_batch_its_counts_and_its_failures(project, capsys):
    project.write("ingest_rows.py", ROWS)
    result = ingestkit.run(["--dsn", project.dsn, str(project.root)])
    assert isinstance(result, ingestkit.BatchResult)
    assert result.exit_code == 1 and not result.ok
    row = project.query("SELECT * FROM ingestkit.batches")
    assert len(row) == 1 and str(row[0]["id"]) == result.batch_id
    assert result.counts == row[0]["counts"]
    assert result.counts == {
        "succeeded": 19,
        "failed": 2,
        "error": 1,
        "skipped": 0,
        "unchanged": 0,
    }
    got = [(f.processor, f.key, f.status, f.error_type) for f in result.failures]
    assert sorted(got) == [
        ("ingest_rows.py::process_keyless", "#2", "error", "RecordError"),
        ("ingest_rows.py::process_row", "14", "failed", "ValueError"),
        ("ingest_rows.py::process_row", "7", "failed", "ValueError"),
    ], got
    seven = next(f for f in result.failures if f.key == "7")
    assert seven.error_message == "multiple of 7: 7"
    assert seven.nodeid == "ingest_rows.py::process_row[7]"
    # the same failures as the batch recorded
    recorded = project.query(
        "SELECT processor, key, status, error_type, error_message FROM ingestkit.items"
        " WHERE batch_id = %s AND status IN ('failed', 'error')",
        (result.batch_id,),
    )
    assert sorted(recorded, key=str) == sorted(
        [
            {
                "processor": f.processor,
                "key": f.key,
                "status": f.status,
                "error_type": f.error_type,
                "error_message": f.error_message,
            }
            for f in result.failures
        ],
        key=str,
    )
    assert project.scalar("SELECT count(*) FROM t") == 18
    # the run printed as the command does: the scheduler's log
    assert "19 succeeded" in capsys.readouterr().out

    # a second run: nothing to do but the failures, which fail again
    again = ingestkit.run(
        f"--dsn '{project.dsn}' {project.root}"
    )  # a string: split as a shell would
    assert again.exit_code == 1 and again.batch_id != result.batch_id
    assert again.counts["unchanged"] == 19 and again.counts["failed"] == 2
    assert len(again.failures) == 3


def test_run_exit_codes_without_a_batch(project, tmp_path):
    project.write("ingest_ok.py", "import ingestkit\n\ndef process_once(db):\n    pass\n")
    ok = ingestkit.run(["--dsn", project.dsn, str(project.root)])
    assert (ok.exit_code, ok.ok, ok.failures) == (0, True, [])
    assert ok.counts["succeeded"] == 1
    nothing = ingestkit.run(["--dsn", project.dsn, "--lf", str(project.root)])
    assert (nothing.exit_code, nothing.batch_id, nothing.counts) == (0, None, {})
    usage = ingestkit.run(["--dsn", project.dsn, "--no-such-option"])
    assert (usage.exit_code, usage.batch_id, usage.counts, usage.failures) == (4, None, {}, [])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "ingestkit.toml").write_text("")
    assert ingestkit.run(["--dsn", project.dsn, str(empty)]).exit_code == 5
    down = ingestkit.run(["--dsn", "postgresql://nobody@127.0.0.1:1/none", str(project.root)])
    assert (down.exit_code, down.batch_id) == (4, None)
    assert project.scalar("SELECT count(*) FROM ingestkit.batches") == 1


def test_run_registers_the_plugins_it_is_given(project):
    project.write("ingest_rows.py", ROWS)
    seen = []

    class Plugin:
        @ingestkit.hookimpl
        def ingestkit_batch_finish(self, session, exitstatus):
            seen.append((str(session.batch.id), exitstatus))

    result = ingestkit.run(["--dsn", project.dsn, "-q", str(project.root)], plugins=[Plugin()])
    assert seen == [(result.batch_id, 1)]


def test_run_on_workers_reports_the_whole_batch(project):
    project.write("ingest_rows.py", ROWS)
    project.query("CREATE TABLE t (id int PRIMARY KEY)")  # not by two workers at once
    result = ingestkit.run(["--dsn", project.dsn, "-n", "2", "-q", str(project.root)])
    assert result.exit_code == 1
    assert (result.counts["succeeded"], result.counts["failed"]) == (19, 2)
    assert len(result.failures) == 3
    assert project.scalar("SELECT id::text FROM ingestkit.batches") == result.batch_id


# -- the recipes of docs/scheduling.md ------------------------------------------------


def recipe(name: str) -> str:
    """The code block that follows ``<!-- recipe: NAME -->`` in docs/scheduling.md."""
    text = SCHEDULING.read_text()
    match = re.search(rf"<!-- recipe: {name} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"no recipe {name!r} in {SCHEDULING}"
    return textwrap.dedent(match.group(1))


def test_the_cron_wrapper_exits_with_the_batch_and_prints_its_failures(project):
    project.write("ingest_rows.py", ROWS)
    wrapper = project.write("run_ingest.py", recipe("cron-wrapper"))
    env = {**os.environ, "INGESTKIT_DSN": project.dsn}
    done = subprocess.run(
        [sys.executable, str(wrapper)], cwd=project.root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ingest_rows.py::process_row[7]" in done.stderr
    assert re.search(r"batch [0-9a-f-]{36}: 3 failure", done.stderr), done.stderr


def test_the_airflow_and_dagster_callables_fail_the_task_on_failures(project, monkeypatch):
    """The task functions of the recipes, without Airflow or Dagster: what they call."""
    project.write("ingest_rows.py", ROWS)
    monkeypatch.setenv("INGESTKIT_DSN", project.dsn)
    monkeypatch.setenv("INGESTKIT_PROJECT", str(project.root))
    namespace: dict = {}
    exec(compile(recipe("task-function"), "scheduling.md", "exec"), namespace)
    with pytest.raises(RuntimeError, match=r"3 failed item\(s\), e.g. ingest_rows.py::process_"):
        namespace["ingest"]()
    project.write(
        "ingest_rows.py",
        ROWS.replace("% 7 == 0", "% 1000 == 999").replace('{"nocode": 1}', '{"code": "y"}'),
    )
    summary = namespace["ingest"]()
    assert summary["exit_code"] == 0 and summary["counts"]["succeeded"] == 3, summary
    assert summary["batch_id"] == project.scalar(
        "SELECT id::text FROM ingestkit.batches ORDER BY started_at DESC LIMIT 1"
    )


def test_the_container_worker_joins_a_leaders_batch(project):
    """The Kubernetes Job recipe: the worker's command, started before its leader,
    waits for the batch, joins it, and exits 0 when the batch is over."""
    project.write(
        "ingest_slow.py",
        """
        import time
        import ingestkit

        @ingestkit.source(({"id": i} for i in range(400)), key="id")
        def process_slow(record):
            time.sleep(0.01)
        """,
    )
    script = project.write("join_batch.py", recipe("worker-command"))
    env = {
        **os.environ,
        "INGESTKIT_DSN": project.dsn,
        "INGESTKIT_JOIN_WAIT": "30",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    assert project.run("--batches").exit_code == 0  # the schema, for the worker's listing
    worker = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1)  # the worker finds no batch yet, and waits
        leader = project.cli("-n", "1")
        out, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert leader.returncode == 0, leader.stdout
    assert worker.returncode == 0, out
    done = re.search(
        r"worker \(pid \d+\) of a shared batch.*process_slow (\d+) succeeded", out, re.S
    )
    assert done and int(done.group(1)) > 0, out  # it did some of the work
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 400
    assert project.scalar("SELECT count(DISTINCT key) FROM ingestkit.items") == 400
    assert project.scalar("SELECT count(*) FROM ingestkit.batches") == 1
