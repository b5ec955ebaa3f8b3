"""§4: the command line as a user meets it."""

import os
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

ROWS = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source([{"id": i} for i in range(1, 11)], key="id")
def process_row(record, db):
    if record["id"] in (3, 6, 9):
        raise ValueError(f"bad row {record['id']}")
    db.insert("t", record)
"""


def test_exit_codes_ok_failed_and_no_processors(project):
    assert project.run().exit_code == 5
    project.write("ingest_ok.py", "def process_once():\n    pass\n")
    assert project.run().exit_code == 0
    project.write("ingest_rows.py", ROWS)
    assert project.run().exit_code == 1


def test_exitfirst_and_maxfail_stop_the_batch_with_exit_2(project):
    project.write("ingest_rows.py", ROWS)
    result = project.run("-x", "--chunk-size", "4")
    assert result.exit_code == 2
    assert result.statuses() == {"1": "succeeded", "2": "succeeded", "3": "failed"}
    assert "stopping after 1 failure" in result.output
    assert result.batch["status"] == "interrupted"
    result = project.run("--maxfail", "2", "--chunk-size", "4")
    assert result.exit_code == 2
    assert result.counts == {"failed": 2, "succeeded": 2, "unchanged": 2}


def test_summary_groups_failures_and_prints_rerun_command(project):
    project.write("ingest_rows.py", ROWS)
    result = project.run()
    out = result.output
    assert "ingest_rows.py::process_row: ValueError (3 items)" in out
    assert "keys: 3, 6, 9" in out
    assert out.count("Traceback") == 1
    assert "7 succeeded, 3 failed" in out
    assert "rerun the failures: ingestkit --lf" in out
    assert "batch: " + result.batch_id in out


def test_verbose_quiet_and_tb_styles(project):
    project.write("ingest_rows.py", ROWS)
    verbose = project.run("-v", "--reprocess")
    assert "ingest_rows.py::process_row[1] SUCCEEDED" in verbose.output
    assert "ingest_rows.py::process_row[3] FAILED" in verbose.output
    quiet = project.run("-q", "--tb=no")
    assert "session starts" not in quiet.output
    assert "Traceback" not in quiet.output
    assert "3 failed" in quiet.output
    line = project.run("--tb=line")
    assert "Traceback" not in line.output
    assert "bad row 3" in line.output
    long = project.run("--tb=long")
    assert "Traceback" in long.output


def test_unreachable_database_is_one_line_exit_4_with_password_masked(project):
    project.write("ingest_ok.py", "def process_once():\n    pass\n")
    proc = project.cli("--dsn", "postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere", dsn=False)
    assert proc.returncode == 4
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith(
        "ERROR: cannot connect to postgresql://someone:***@127.0.0.1:1/nowhere"
    )
    assert "s3cret-pw" not in proc.stdout


def test_usage_error_is_exit_4(project):
    proc = project.cli("--no-such-option")
    assert proc.returncode == 4
    assert "Traceback" not in proc.stdout


def test_password_never_reaches_output_or_batches_argv(project, ingestkit_dsn):
    # a DSN with a password the trust-auth server ignores
    import psycopg2.extensions

    params = psycopg2.extensions.parse_dsn(ingestkit_dsn)
    params["password"] = "hunter2-secret"
    dsn = psycopg2.extensions.make_dsn(**params)
    project.write("ingest_rows.py", ROWS)
    proc = project.cli("--dsn", dsn, dsn=False)
    assert proc.returncode == 1
    assert "hunter2-secret" not in proc.stdout
    argv = project.scalar("SELECT argv::text FROM ingestkit.batches")
    assert "hunter2-secret" not in argv and "***" in argv


def test_last_failed_reruns_only_failures_from_stored_payloads(project):
    project.write("ingest_rows.py", ROWS)
    first = project.run()
    assert first.counts == {"succeeded": 7, "failed": 3}
    # the source changes: --lf still re-feeds the stored records
    project.write(
        "ingest_rows.py",
        ROWS.replace("range(1, 11)", "range(100, 101)").replace(
            'if record["id"] in (3, 6, 9):', 'if record["id"] == 6:'
        ),
    )
    lf = project.run("--lf")
    assert lf.counts == {"succeeded": 2, "failed": 1}
    assert {i["key"]: i["attempt"] for i in lf.items} == {"3": 2, "6": 2, "9": 2}
    lf2 = project.run("--lf")
    assert lf2.statuses() == {"6": "failed"}
    assert lf2.items[0]["attempt"] == 3
    project.write("ingest_rows.py", ROWS.replace('if record["id"] in (3, 6, 9):', "if False:"))
    assert project.run("--lf").counts == {"succeeded": 1}
    nothing = project.run("--lf")
    assert nothing.exit_code == 0
    assert "nothing to rerun" in nothing.output


def test_failed_first_runs_failures_then_the_rest_once(project):
    project.write("ingest_rows.py", ROWS)
    project.run()
    project.write("ingest_rows.py", ROWS.replace('if record["id"] in (3, 6, 9):', "if False:"))
    result = project.run("--ff", "-v")
    assert result.exit_code == 0
    assert result.counts == {"succeeded": 3, "unchanged": 7}
    assert [i["key"] for i in result.items] == ["3", "6", "9"]


def test_item_attempt_and_previous_error_fixture(project):
    project.write(
        "ingest_retry.py",
        """
import ingestkit

@ingestkit.source([{"id": 1}], key="id")
def process_row(record, item, log):
    log.warning("attempt=%s previous=%s", item.attempt, item.previous_error)
    if item.attempt < 3:
        raise RuntimeError(f"try {item.attempt}")
""",
    )
    project.run()
    project.run()
    third = project.run()
    assert third.counts == {"succeeded": 1}
    assert "attempt=3 previous=try 2" in third.items[0]["log"]


def test_sigint_rolls_back_the_item_in_flight_and_exits_2(project):
    project.write(
        "ingest_slow.py",
        """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source(range(1, 2001), key=str)
def process_n(record, db):
    db.execute("INSERT INTO t VALUES (%s)", (record,))
    time.sleep(0.005)
""",
    )
    proc = project.spawn("--chunk-size", "20")
    project.wait_for_items(40)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert "KeyboardInterrupt" in out
    assert "succeeded" in out
    succeeded = {
        r["key"] for r in project.query("SELECT key FROM ingestkit.items WHERE status='succeeded'")
    }
    written = {str(r["id"]) for r in project.query("SELECT id FROM t")}
    assert succeeded == written
    assert project.scalar("SELECT status FROM ingestkit.batches") == "interrupted"
    assert project.scalar("SELECT exit_code FROM ingestkit.batches") == 2


def test_junitxml_has_a_suite_per_processor(project, tmp_path):
    project.write("ingest_rows.py", ROWS)
    out = tmp_path / "report.xml"
    project.run("--junitxml", str(out))
    root = ET.parse(out).getroot()
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "ingest_rows.py::process_row"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "process_row[3]",
        "process_row[6]",
        "process_row[9]",
        "process_row[summary]",
    ]
    assert {c.get("classname") for c in cases} == {"ingest_rows"}
    assert suite.get("failures") == "3"


def test_embedded_database_is_the_default(project):
    project.write("ingest_ok.py", "def process_once(db):\n    db.query('SELECT 1')\n")
    env = {k: "" for k in ("INGESTKIT_DSN", "DATABASE_URL")}
    proc = project.cli(dsn=False, env=env)
    assert proc.returncode == 0, proc.stdout
    assert "embedded PostgreSQL under .ingestkit/pgdata" in proc.stdout
    assert (project.root / ".ingestkit" / "pgdata" / "PG_VERSION").exists()


def test_two_runs_starting_at_once_create_the_schema_once(project):
    project.write("ingest_ok.py", "def process_once(db):\n    db.query('SELECT 1')\n")
    procs = [project.spawn() for _ in range(3)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert project.scalar("SELECT count(*) FROM ingestkit.schema_version") == 1
    assert project.scalar("SELECT count(*) FROM ingestkit.batches WHERE status = 'finished'") == 3


def test_progress_is_not_a_line_per_item(project):
    project.write(
        "ingest_many.py",
        """
import ingestkit

@ingestkit.source(range(20000), key=str)
def process_n(record):
    pass
""",
    )
    proc = project.cli()
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) < 15, proc.stdout
    assert "20,000 succeeded" in proc.stdout


def test_junitxml_is_valid_against_the_junit_schema(project, tmp_path):
    import xmlschema

    schema = xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "junit.xsd"))
    project.write("ingest_rows.py", ROWS)
    project.write(
        "ingest_more.py",
        """
import ingestkit

@ingestkit.source([{"k": "a\\x01b <&>"}, {"k": "ok"}], key="k")
def process_odd(record):
    if record["k"] != "ok":
        raise ValueError("control \\x02 characters and <markup> & quotes \\" in a message")

def process_broken(missing_fixture):
    pass
""",
    )
    out = tmp_path / "junit.xml"
    result = project.run("--junitxml", str(out))
    assert result.exit_code == 1
    schema.validate(str(out))
    root = ET.parse(out).getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {
        "ingest_more.py::process_odd",
        "ingest_more.py::process_broken",
        "ingest_rows.py::process_row",
    }
    assert suites["ingest_more.py::process_broken"].get("errors") == "1"
    assert suites["ingest_rows.py::process_row"].get("tests") == "10"


def test_two_runs_at_once_never_process_an_item_twice(project):
    project.write(
        "ingest_slow.py",
        """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source(range(300), key=str)
def process_n(record, db):
    time.sleep(0.002)
    db.execute("INSERT INTO t VALUES (%s)", (record,))
""",
    )
    first, second = project.spawn(), project.spawn()
    out1, out2 = first.communicate(timeout=120)[0], second.communicate(timeout=120)[0]
    assert (first.returncode, second.returncode) == (0, 0), out1 + out2
    assert "ingest_slow.py::process_n is being run by batch" in out1 + out2
    assert project.scalar("SELECT count(*) FROM t") == 300
    batches = project.query("SELECT counts FROM ingestkit.batches ORDER BY started_at")
    counts = [b["counts"] for b in batches]
    assert sorted((c["succeeded"], c["unchanged"]) for c in counts) == [(0, 300), (300, 0)]
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 300


def test_ingestkit_main_stays_the_function_once_its_modules_are_imported(project):
    import ingestkit
    import ingestkit.cli
    import ingestkit.session  # noqa: F401 - a submodule named like ingestkit.main once shadowed it

    project.write("ingest_ok.py", "def process_once():\n    pass\n")
    assert callable(ingestkit.main)


def test_looking_back_into_a_closed_pipe_is_not_an_error(project):
    import subprocess
    import sys

    project.write(
        "ingest_bad.py",
        "import ingestkit\n\n"
        "@ingestkit.source([{'id': i, 'pad': 'x' * 100} for i in range(3000)], key='id')\n"
        "def process_bad(record):\n"
        "    raise ValueError('bad')\n",
    )
    project.run()  # ~500 kB of failures to export: more than a pipe holds
    argv = [
        sys.executable,
        "-m",
        "ingestkit",
        "--dsn",
        project.dsn,
        "--export",
        "--format",
        "jsonl",
    ]
    proc = subprocess.run(
        ["bash", "-c", '"$@" | head -n 1 >/dev/null; exit "${PIPESTATUS[0]}"', "bash", *argv],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
