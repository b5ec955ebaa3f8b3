"""§3: an item's writes commit with its outcome row, or not at all."""

import signal

import pytest

SCHEMA = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS side (id int PRIMARY KEY)")
"""


def write_rows(project, body, n=20, extra=""):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + extra
        + f"""
@ingestkit.source([{{"id": i, "v": "v%d" % i}} for i in range(1, {n} + 1)], key="id")
def process_row(record, db, lookup):
{body}
""",
    )


def test_failing_item_rolls_back_only_its_own_writes(project):
    write_rows(
        project,
        """
    db.execute("INSERT INTO side VALUES (%s)", (record["id"],))
    db.insert("t", record)
    if record["id"] % 5 == 0:
        raise RuntimeError("boom %d" % record["id"])
""",
    )
    result = project.run("--chunk-size", "7")
    assert result.exit_code == 1
    assert result.counts == {"succeeded": 16, "failed": 4}
    ids = [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")]
    side = [r["id"] for r in project.query("SELECT id FROM side ORDER BY id")]
    expected = [i for i in range(1, 21) if i % 5]
    assert ids == expected
    assert side == expected


def test_constraint_violation_on_buffered_insert_is_pinned_on_its_item(project):
    project.write("pre.sql", "")
    write_rows(
        project,
        """
    row = dict(record)
    if record["id"] in (3, 11):
        row["v"] = None
    db.insert("t", row)
""",
    )
    result = project.run("--chunk-size", "8")
    assert result.counts == {"succeeded": 18, "failed": 2}
    failed = result.by_key()
    assert failed["3"]["error_type"] == "NotNullViolation"
    assert "not-null" in failed["3"]["error_message"]
    assert project.scalar("SELECT count(*) FROM t") == 18


def test_flush_failure_of_an_item_with_statements_replays_the_chunk(project):
    write_rows(
        project,
        """
    db.execute("INSERT INTO side VALUES (%s)", (record["id"],))
    db.insert("t", {"id": record["id"], "v": None if record["id"] == 4 else record["v"]})
    # the insert is buffered; the next item's execute flushes it under that item
""",
        n=10,
    )
    result = project.run("--chunk-size", "10")
    assert result.counts == {"succeeded": 9, "failed": 1}
    assert result.statuses()["4"] == "failed"
    assert project.scalar("SELECT count(*) FROM t") == 9
    assert project.scalar("SELECT count(*) FROM side") == 9
    assert project.scalar("SELECT count(*) FROM side WHERE id = 4") == 0


def test_item_reads_its_own_buffered_writes(project):
    write_rows(
        project,
        """
    db.insert("t", record)
    row = db.query_one("SELECT v FROM t WHERE id = %s", (record["id"],))
    assert row == {"v": record["v"]}
""",
        n=5,
    )
    assert project.run().counts == {"succeeded": 5}


def test_caught_database_error_still_fails_the_item(project):
    write_rows(
        project,
        """
    try:
        db.execute("INSERT INTO t VALUES (%s, NULL)", (record["id"],))
    except Exception:
        pass
""",
        n=3,
    )
    result = project.run()
    assert result.counts == {"failed": 3}
    assert "null value" in result.items[0]["error_message"]


def test_get_or_create_row_and_cache_are_gone_when_the_item_fails(project):
    project.write(
        "ingest_dims.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS color (id serial PRIMARY KEY, name text UNIQUE)")
    db.execute("CREATE TABLE IF NOT EXISTS thing (id int PRIMARY KEY, color_id int)")

@ingestkit.source([
    {"id": 1, "color": "red", "fail": True},
    {"id": 2, "color": "red", "fail": False},
    {"id": 3, "color": "blue", "fail": False},
    {"id": 4, "color": "blue", "fail": False},
], key="id")
def process_thing(record, db, lookup):
    color_id = lookup.get_or_create("color", name=record["color"])
    if record["fail"]:
        raise ValueError("bad thing")
    db.insert("thing", {"id": record["id"], "color_id": color_id})
""",
    )
    result = project.run("--chunk-size", "4")
    assert result.counts == {"succeeded": 3, "failed": 1}
    colors = project.query("SELECT id, name FROM color ORDER BY name")
    assert [c["name"] for c in colors] == ["blue", "red"]
    # thing 2 points at the red row that exists, not at the rolled-back one
    assert project.scalar("SELECT count(*) FROM thing JOIN color ON color.id = thing.color_id") == 3


def test_lookup_missing_names_table_and_match(project):
    write_rows(project, """    lookup("side", id=record["id"] + 1000)""", n=2)
    result = project.run()
    assert result.counts == {"failed": 2}
    item = result.items[0]
    assert item["error_type"] == "LookupMissing"
    assert "side" in item["error_message"] and "id=1001" in item["error_message"]


def test_dry_run_rolls_everything_back(project):
    write_rows(project, """    db.insert("t", record)""", n=5)
    result = project.run("--dry-run")
    assert result.exit_code == 0
    assert "dry run" in result.output
    assert project.scalar("SELECT to_regclass('t') IS NULL") is True
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 0
    assert result.batch["meta"] == {"dry_run": True}
    again = project.run()
    assert again.counts == {"succeeded": 5}


def test_changed_content_runs_again_and_reprocess_runs_everything(project):
    write_rows(
        project,
        """
    db.upsert("t", {"id": record["id"], "v": record["v"]}, conflict=("id",))
""",
        n=5,
    )
    assert project.run().counts == {"succeeded": 5}
    assert project.run().counts == {"unchanged": 5}
    source = (
        (project.root / "ingest_rows.py")
        .read_text()
        .replace('"v%d" % i', '"w%d" % i if i == 2 else "v%d" % i')
    )
    project.write("ingest_rows.py", source)
    assert project.run().counts == {"succeeded": 1, "unchanged": 4}
    assert project.run("--reprocess").counts == {"succeeded": 5}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_killed_process_leaves_a_consistent_database_and_a_rerun_finishes(project, sig):
    project.write(
        "ingest_slow.py",
        """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source(range(1, 401), key=lambda r: str(r))
def process_n(record, db):
    time.sleep(0.002)
    db.execute("INSERT INTO t VALUES (%s)", (record,))
""",
    )
    proc = project.spawn("--chunk-size", "10")

    project.wait_for_items(50)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    succeeded = {
        r["key"]
        for r in project.query("SELECT key FROM ingestkit.items WHERE status = 'succeeded'")
    }
    written = {str(r["id"]) for r in project.query("SELECT id FROM t")}
    assert succeeded == written  # no outcome without its writes, no writes without outcome
    assert 50 <= len(written) < 400

    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 400 - len(written), "unchanged": len(written)}
    assert project.scalar("SELECT count(*) FROM t") == 400
    # the killed batch is detected as interrupted, without any timeout
    statuses = [
        r["status"]
        for r in project.query("SELECT status FROM ingestkit.batches ORDER BY started_at")
    ]
    assert statuses == ["interrupted", "finished"]


def test_content_reverted_to_what_succeeded_is_unchanged_again(project):
    write_rows(project, """    db.insert("t", record)""", n=3)
    assert project.run().counts == {"succeeded": 3}
    source = (project.root / "ingest_rows.py").read_text()
    project.write("ingest_rows.py", source.replace('"v%d" % i', '"w%d" % i'))
    changed = project.run()  # plain inserts: the changed rows collide with the old ones
    assert changed.counts == {"failed": 3}
    project.write("ingest_rows.py", source)
    reverted = project.run()
    assert reverted.counts == {"unchanged": 3}
    assert "nothing to rerun" in project.run("--lf").output


def test_lookup_forgets_a_row_that_a_failing_teardown_rolled_back(project):
    """Every rollback reaches the lookup cache (it listens to the transaction)."""
    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS dim (id serial PRIMARY KEY, code text UNIQUE)")

@ingestkit.fixture(scope="processor")
def makes_a_row_then_breaks(lookup):
    yield
    lookup.get_or_create("dim", code="ghost")  # rolled back with the failing teardown
    raise RuntimeError("teardown broke")

@ingestkit.source([{"id": 1}], key="id")
def process_a(record, makes_a_row_then_breaks):
    pass

@ingestkit.source([{"id": 1}], key="id")
def process_b(record, lookup):
    assert lookup.get("dim", code="ghost") is None, "a rolled-back row's id was cached"
""",
    )
    result = project.run()
    assert "teardown broke" in result.output
    assert project.scalar("SELECT count(*) FROM dim") == 0
    statuses = {(i["processor"], i["key"]): i["status"] for i in result.items}
    assert statuses[("ingest_x.py::process_b", "1")] == "succeeded", result.output


LOOKUP_MISSES = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS dim (id serial PRIMARY KEY, code text UNIQUE)")
    db.execute("CREATE TABLE IF NOT EXISTS fact (id int PRIMARY KEY, dim_id int)")
    db.execute("INSERT INTO dim (code) VALUES ('a') ON CONFLICT DO NOTHING")

@ingestkit.source(ingestkit.read_jsonl("data/x.jsonl"), key="id")
def process_fact(record, db, lookup):
    if record.get("add"):
        ADD
    db.insert("fact", {"id": record["id"], "dim_id": lookup("dim", code=record["code"])})
"""


@pytest.mark.parametrize(
    "add",
    [
        pytest.param('db.insert("dim", {"code": record["add"]})', id="db.insert"),
        pytest.param(
            'db.execute("INSERT INTO dim (code) VALUES (%s)", (record["add"],))', id="db.execute"
        ),
        pytest.param('lookup.get_or_create("dim", code=record["add"])', id="get_or_create"),
    ],
)
def test_a_cached_miss_is_forgotten_when_the_table_is_written(project, add):
    """Misses are cached (one query per distinct missing value), until that table is written."""
    project.write("ingest_x.py", LOOKUP_MISSES.replace("ADD", add))
    project.write(
        "data/x.jsonl",
        '{"id": 1, "code": "zz"}\n{"id": 2, "code": "zz"}\n'
        '{"id": 3, "code": "zz", "add": "zz"}\n{"id": 4, "code": "zz"}\n'
        '{"id": 5, "code": "a"}\n',
    )
    result = project.run("--chunk-size", "10")
    assert result.statuses() == {
        "1": "failed",
        "2": "failed",
        "3": "succeeded",
        "4": "succeeded",
        "5": "succeeded",
    }, result.output
    assert project.scalar("SELECT count(*) FROM fact") == 3


def test_lookup_misses_are_queried_once_per_distinct_value(project):
    """A miss is cached although the item that met it fails (issue 16)."""
    project.write("ingest_x.py", LOOKUP_MISSES.replace("ADD", "pass"))
    project.write(
        "data/x.jsonl",
        "".join(f'{{"id": {i}, "code": "x{i % 3}"}}\n' for i in range(1, 301)),
    )
    project.run("--chunk-size", "50")

    def scans() -> int:
        return project.scalar(
            "SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables"
            " WHERE relname = 'dim'"
        )

    before = scans()
    result = project.run("--reprocess", "--chunk-size", "50")
    assert result.counts == {"failed": 300}
    assert scans() - before < 10  # 3 distinct values, and the fixture's own INSERT


def test_a_preloaded_dimension_written_by_the_batch_is_asked_again(project):
    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db, lookup):
    db.execute("CREATE TABLE IF NOT EXISTS dim (id serial PRIMARY KEY, code text UNIQUE)")
    lookup.preload("dim", "code")

@ingestkit.source([{"id": 1, "code": "new"}], key="id")
def process_x(record, db, lookup):
    db.insert("dim", {"code": record["code"]})
    assert lookup("dim", code=record["code"])  # not "missing" from the preloaded copy
""",
    )
    result = project.run()
    assert result.statuses() == {"1": "succeeded"}, result.output
