"""Issue #7: one batch on several workers (-n N, ingestkit worker --batch ID)."""

import time

import pytest

TARGET = """
import os
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def target(db):
    db.execute("CREATE TABLE IF NOT EXISTS target (id int PRIMARY KEY, pid int NOT NULL)")
"""

NUMBERS = (
    TARGET
    + """
@ingestkit.source(ingestkit.read_csv("numbers.csv"), key="id")
def process_number(record, db):
    time.sleep({pause})
    n = int(record["id"])
    if n % 250 == 0:
        raise ValueError(f"no multiples of 250: {{n}}")
    db.insert("target", {{"id": n, "pid": os.getpid()}})
"""
)


def write_numbers(project, count: int, pause: float = 0.0) -> None:
    lines = ["id,name"] + [f"{i},n{i}" for i in range(1, count + 1)]
    project.write("numbers.csv", "\n".join(lines) + "\n")
    project.write("ingest_numbers.py", NUMBERS.format(pause=pause))


def out_of(result) -> str:
    return f"exit {result.exit_code}\n{result.output}"


def test_three_workers_twenty_thousand_records_with_failures(project):
    write_numbers(project, 20_000, pause=0.0001)
    result = project.run("-n", "3")
    assert result.exit_code == 1, out_of(result)
    assert result.counts == {"succeeded": 19_920, "failed": 80}
    assert "workers: 3 processes (-n 3)" in result.output
    assert "19,920 succeeded, 80 failed" in result.output
    assert "ingest_numbers.py::process_number: ValueError (80 items)" in result.output
    assert "rerun the failures: ingestkit --lf" in result.output
    # every key exactly once, in the audit trail and in the target table
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 20_000
    assert project.scalar("SELECT count(DISTINCT key) FROM ingestkit.items") == 20_000
    assert project.scalar("SELECT count(*) FROM target") == 19_920
    failed = project.query(
        "SELECT key FROM ingestkit.items WHERE status = 'failed' ORDER BY key::int"
    )
    assert [int(r["key"]) for r in failed] == list(range(250, 20_001, 250))
    # all three took part, and the queue is gone
    assert project.scalar("SELECT count(DISTINCT pid) FROM target") == 3
    assert project.scalar("SELECT count(*) FROM ingestkit.tasks") == 0
    assert project.scalar("SELECT count(*) FROM ingestkit.results") == 0
    assert project.scalar("SELECT count(*) FROM ingestkit.dispatch") == 0


def test_reruns_with_workers_skip_what_went_in_and_lf_reruns_the_failures(project):
    write_numbers(project, 2_000)
    assert project.run("-n", "2").counts == {"succeeded": 1_992, "failed": 8}
    again = project.run("-n", "2")
    assert again.counts == {"failed": 8, "unchanged": 1_992}
    assert {i["attempt"] for i in again.items} == {2}
    project.write("ingest_numbers.py", NUMBERS.format(pause=0).replace("% 250 == 0", "< 0"))
    fixed = project.run("--lf", "-n", "2")
    assert fixed.exit_code == 0, out_of(fixed)
    assert fixed.counts == {"succeeded": 8}
    assert {i["attempt"] for i in fixed.items} == {3}
    assert project.run("--lf", "-n", "2").output.startswith("nothing to rerun")
    assert project.scalar("SELECT count(*) FROM target") == 2_000


def test_a_worker_started_by_hand_joins_a_running_batch(project):
    write_numbers(project, 600, pause=0.005)
    project.run("--collect-only")
    project.run("-k", "nothing")  # the schema exists before the leader starts
    leader = project.spawn("-n", "1")
    deadline = time.time() + 30
    batch = None
    while batch is None and time.time() < deadline:
        batch = project.scalar(
            "SELECT b.id::text FROM ingestkit.batches b JOIN ingestkit.dispatch d"
            " ON d.batch_id = b.id WHERE b.status = 'running'"
        )
        time.sleep(0.05)
    assert batch, "the leader did not start its batch"
    joined = project.cli("worker", "--batch", batch[:8])
    out, _ = leader.communicate(timeout=60)
    assert leader.returncode == 1, out
    assert joined.returncode in (0, 1), joined.stdout  # 1: some of its items failed
    assert f"batch: {batch}" in joined.stdout
    assert "worker (pid" in joined.stdout
    assert "598 succeeded, 2 failed" in out, out
    assert project.scalar("SELECT count(*) FROM target") == 598
    assert project.scalar("SELECT count(DISTINCT pid) FROM target") == 2
    assert project.scalar("SELECT count(DISTINCT key) FROM ingestkit.items") == 600


def test_exitfirst_stops_every_worker(project):
    write_numbers(project, 3_000, pause=0.001)
    project.write(
        "ingest_numbers.py",
        NUMBERS.format(pause=0.001).replace("n % 250 == 0", "n > 500 and n % 50 == 0"),
    )
    result = project.run("-n", "2", "-x")
    assert result.exit_code == 2, out_of(result)
    assert result.batch["status"] == "interrupted"
    assert "stopping after 1 failure" in result.output
    counts = result.counts
    assert 1 <= counts["failed"] < 10
    assert sum(counts.values()) < 3_000
    assert project.scalar("SELECT count(*) FROM ingestkit.tasks") == 0
    # what did run is recorded exactly once; a rerun finishes the rest
    done = project.scalar("SELECT count(*) FROM target")
    assert done == counts["succeeded"]
    rest = project.run("-n", "2")
    assert rest.counts["unchanged"] == done
    assert project.scalar("SELECT count(DISTINCT key) FROM ingestkit.items") == 3_000


ORDERED = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY,"
        " customer_id int NOT NULL REFERENCES customers (id))"
    )

@ingestkit.source([{"id": i} for i in range(1, 501)], key="id")
def process_customer(record, db):
    db.insert("customers", record)

@ingestkit.source([{"id": i, "customer": 501 - i} for i in range(1, 501)], key="id")
def process_order(record, db, lookup):
    customer = lookup("customers", id=record["customer"])
    db.insert("orders", {"id": record["id"], "customer_id": customer})
"""


def test_processors_keep_their_order_across_workers(project):
    """The second processor needs every row the first one wrote."""
    project.write("ingest_shop.py", ORDERED)
    result = project.run("-n", "3")
    assert result.exit_code == 0, out_of(result)
    assert result.counts == {"succeeded": 1_000}
    assert project.scalar("SELECT count(*) FROM orders") == 500


FIXTURES = """
import time
import ingestkit

@ingestkit.fixture(scope="batch")
def per_worker():
    note("batch-setup")
    time.sleep(0.3)
    note("batch-ready")
    yield
    note("batch-teardown")

@ingestkit.fixture(scope="processor")
def per_processor():
    note("processor-setup")
    yield

@ingestkit.source(range(300), key=str)
def process_one(record, per_worker, per_processor):
    pass
"""


def test_wider_fixtures_are_set_up_once_per_worker(project, events):
    project.write_noted("ingest_fixtures.py", FIXTURES)
    result = project.run("-n", "2", "--chunk-size", "10")
    assert result.exit_code == 0, out_of(result)
    assert result.counts == {"succeeded": 300}
    seen = events()
    workers = seen.count("batch-setup")
    assert 1 <= workers <= 2
    # one worker at a time sets up (two CREATE TABLE IF NOT EXISTS at once can fail)
    setups = [e for e in seen if e in ("batch-setup", "batch-ready")]
    assert setups == ["batch-setup", "batch-ready"] * workers
    assert seen.count("batch-teardown") == workers
    assert seen.count("processor-setup") == workers


BAD_INPUT = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text)")

@ingestkit.source(ingestkit.read_csv("rows.csv"), key="id")
def process_row(record, db):
    db.insert("t", {"id": int(record["id"]), "v": record["v"]})

@ingestkit.source(ingestkit.read_csv("missing.csv"), key="id")
def process_missing(record):
    pass
"""


def test_bad_input_under_workers_is_recorded_as_in_one_process(project):
    project.write("ingest_bad.py", BAD_INPUT)
    # a short row, a duplicate key, a duplicate primary key under another key, no key
    project.write("rows.csv", "id,v\n1,a\n2,b\n3\n2,again\n02,clash\n,nokey\n4,d\n")
    single = project.run("--dry-run")
    many = project.run("-n", "2")
    assert many.exit_code == 1, out_of(many)

    def outcomes(result):
        return sorted(
            (i["processor"], i["key"], i["status"], i["error_type"]) for i in result.items
        )

    assert single.counts == many.counts
    assert outcomes(many) == [
        ("ingest_bad.py::process_missing", "", "error", "SourceUnreadable"),
        ("ingest_bad.py::process_row", "#6", "error", "RecordError"),
        ("ingest_bad.py::process_row", "02", "failed", "UniqueViolation"),
        ("ingest_bad.py::process_row", "1", "succeeded", None),
        ("ingest_bad.py::process_row", "2", "failed", "DuplicateKey"),
        ("ingest_bad.py::process_row", "2", "succeeded", None),
        ("ingest_bad.py::process_row", "3", "error", "RecordError"),
        ("ingest_bad.py::process_row", "4", "succeeded", None),
    ]
    assert "missing.csv" in many.by_key()[""]["error_message"]


def test_node_ids_with_keys_junitxml_and_dry_run(project, tmp_path):
    write_numbers(project, 1_000)
    picked = project.run("-n", "2", "ingest_numbers.py::process_number[7]", "--junitxml", "j.xml")
    assert picked.exit_code == 0, out_of(picked)
    assert picked.statuses() == {"7": "succeeded"}
    assert (project.root / "j.xml").read_text().count("<testsuite ") == 1
    dry = project.run("-n", "2", "--dry-run")
    assert "--dry-run runs in one process: -n is ignored" in dry.output
    assert dry.batch["meta"] == {"dry_run": True}


def test_workers_run_from_another_folder(project):
    """The workers find the processors by the leader's paths, wherever it ran."""
    write_numbers(project, 300)
    result = project.run("-n", "2", "project", cwd=project.root.parent)
    assert result.exit_code == 1, out_of(result)
    assert result.counts == {"succeeded": 299, "failed": 1}


def test_only_collection_errors_under_workers(project):
    """Nothing to queue: the batch ends at once, with the collection error."""
    project.write("ingest_broken.py", "import no_such_module_anywhere\n")
    result = project.run("-n", "2")
    assert result.exit_code == 1, out_of(result)
    assert "ERROR collecting ingest_broken.py" in result.output
    assert result.batch["status"] == "finished"


@pytest.mark.parametrize("args", [["worker"], ["worker", "--batch", "0000"]])
def test_a_worker_without_a_batch_to_join_is_a_usage_error(project, args):
    write_numbers(project, 10)
    project.run()  # the schema exists
    result = project.cli(*args)
    assert result.returncode == 4, result.stdout
    assert result.stdout.startswith("ERROR: ")
    assert len(result.stdout.strip().splitlines()) == 1
    assert "Traceback" not in result.stdout


LEASE = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def table(db):
    db.execute("CREATE TABLE IF NOT EXISTS seen (setting text, value text)")

@ingestkit.source([{"id": 1}], key="id")
def process_one(record, db):
    for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"):
        value = db.query_one("SELECT current_setting(%s) AS v", (name,))["v"]
        db.insert("seen", {"setting": name, "value": value})
    unix = db.query_one("SELECT inet_client_addr() IS NULL AS unix")["unix"]
    db.insert("seen", {"setting": "unix socket", "value": str(unix)})
"""


def test_a_workers_claims_are_leased_by_the_servers_tcp_keepalives(project):
    """The connection that holds a worker's claims tells the server to give up on
    a silent peer after 10 s + 3 probes 5 s apart (docs/workers.md)."""
    project.write("ingest_lease.py", LEASE)
    result = project.run("-n", "1")
    assert result.exit_code == 0, out_of(result)
    seen = {r["setting"]: r["value"] for r in project.query("SELECT * FROM seen")}
    if seen.pop("unix socket") == "True":  # the embedded server: no TCP, no keepalives
        pytest.skip("a Unix-socket connection has no TCP keepalives")
    assert seen == {
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
    }


def test_the_leader_queues_only_a_few_chunks_ahead(project):
    """Sources stay streams under -n: the queue holds a few chunks per worker,
    never the source."""
    write_numbers(project, 3_000, pause=0.001)
    leader = project.spawn("-n", "2", "--chunk-size", "20")
    most = 0
    while leader.poll() is None:
        try:
            queued = project.scalar("SELECT count(*) FROM ingestkit.tasks")
        except Exception:  # the schema may not exist yet
            queued = 0
        most = max(most, queued or 0)
        time.sleep(0.02)
    out = leader.stdout.read()
    assert leader.returncode == 1, out
    assert "2,988 succeeded, 12 failed" in out
    assert 0 < most <= 6  # 3 per worker: 120 of the 3,000 records at a time


REPLAY = """
import os
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def tables(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, pid int)")
    db.execute("CREATE TABLE IF NOT EXISTS audit (id int, pid int)")

@ingestkit.source([{"id": i, "pk": i - 1 if i % 20 == 0 else i} for i in range(1, 401)], key="id")
def process_row(record, db):
    db.execute("INSERT INTO audit VALUES (%s, %s)", (record["id"], os.getpid()))
    db.insert("t", {"id": record["pk"], "pid": os.getpid()})
"""


def test_a_chunk_replayed_in_a_worker_keeps_its_claim(project):
    """A rejected buffered row of an item that also ran statements makes the
    worker replay its chunk item by item; its task stays claimed meanwhile."""
    project.write("ingest_replay.py", REPLAY)
    result = project.run("-n", "2")
    assert result.exit_code == 1, out_of(result)
    failed = {i["key"] for i in result.items if i["status"] == "failed"}
    # every 20th record repeats the one before's id: its row is rejected, its audit row undone
    assert failed == {str(i) for i in range(20, 401, 20)}
    assert {i["error_type"] for i in result.items if i["status"] == "failed"} == {"UniqueViolation"}
    assert result.counts == {"succeeded": 380, "failed": 20}
    assert project.scalar("SELECT count(*) FROM t") == 380
    assert project.scalar("SELECT count(*) FROM audit") == 380
    assert project.scalar("SELECT count(DISTINCT key) FROM ingestkit.items") == 400


SPLIT_PAIR = """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def target(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

# record 21 writes the primary key of record 20; --chunk-size 20 puts them in two tasks
@ingestkit.source([{{"id": i, "pk": 20 if i == 21 else i}} for i in range(1, 41)], key="id")
def process_row(record, db):
    if record["id"] <= 20:
        time.sleep(0.1)  # the first task is slow: the second one's items finish first
    {write}
"""


@pytest.mark.parametrize(
    "write",
    [
        'db.insert("t", {"id": record["pk"]})',
        'db.execute("INSERT INTO t VALUES (%s)", (record["pk"],))',
    ],
    ids=["buffered", "immediate"],
)
def test_the_first_of_two_conflicting_records_wins_across_worker_tasks(project, write):
    """As in one process: of two records writing the same primary key, the later
    in the source fails, also when they are in two tasks and the later task's
    items finish first (issue #13: key 139 failed instead of 140)."""
    project.write("ingest_split.py", SPLIT_PAIR.format(write=write))
    result = project.run("-n", "2", "--chunk-size", "20")
    assert result.exit_code == 1, out_of(result)
    assert {i["key"] for i in result.items if i["status"] == "failed"} == {"21"}, out_of(result)
    assert result.counts == {"succeeded": 39, "failed": 1}
    assert project.scalar("SELECT count(*) FROM t") == 39
