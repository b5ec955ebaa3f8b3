"""§8: the ``state`` fixture, a processor's incremental state in ``ingestkit.state``.

A change an item makes to ``state`` commits with that item's chunk and is rolled
back with a failing item, as the item's own writes are; a source callable reads it.
"""

import json

SCHEMA = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY CHECK (id <> 13))")
"""


def state_rows(project):
    return {r["processor"]: r for r in project.query("SELECT * FROM ingestkit.state")}


def state_of(project, nodeid="ingest_rows.py::process_row"):
    row = state_rows(project).get(nodeid)
    return None if row is None else row["value"]


def test_a_second_run_reads_only_what_is_new_through_the_state(project):
    project.write("data.json", json.dumps([{"id": i} for i in range(1, 6)]))
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
import json, pathlib

def new_rows(state):
    since = state.get("last_id", 0)
    rows = json.loads((pathlib.Path(__file__).parent / "data.json").read_text())
    return [r for r in rows if r["id"] > since]

@ingestkit.source(new_rows, key="id")
def process_row(record, db, state):
    db.insert("t", {"id": record["id"]})
    state["last_id"] = max(state.get("last_id", 0), record["id"])
""",
    )
    first = project.run()
    assert first.exit_code == 0, first.output
    assert first.counts == {"succeeded": 5}
    [row] = project.query("SELECT * FROM ingestkit.state")
    assert row["processor"] == "ingest_rows.py::process_row"
    assert row["value"] == {"last_id": 5}
    assert str(row["batch_id"]) == str(first.batch_id)
    assert row["updated_at"] is not None

    project.write("data.json", json.dumps([{"id": i} for i in range(1, 9)]))
    second = project.run()
    assert second.exit_code == 0, second.output
    # only 6, 7, 8 were read: the others are not even "unchanged"
    assert second.counts == {"succeeded": 3}
    assert state_of(project) == {"last_id": 8}
    assert project.scalar("SELECT count(*) FROM t") == 8


def test_a_failing_item_rolls_its_state_change_back(project, events):
    project.write_noted(
        "ingest_rows.py",
        SCHEMA.replace("import ingestkit\n", "")
        + """
@ingestkit.source([{"id": i} for i in range(1, 8)], key="id")
def process_row(record, db, state):
    note(record["id"], state.get("count", 0), state.get("last"))
    db.insert("t", {"id": record["id"]})
    state["count"] = state.get("count", 0) + 1
    state["last"] = record["id"]
    state.setdefault("ids", []).append(record["id"])
    if record["id"] in (3, 7):
        raise RuntimeError("boom")
""",
    )
    result = project.run()
    assert result.exit_code == 1
    assert result.counts == {"succeeded": 5, "failed": 2}
    # item 4 saw the state as item 2 left it: item 3's change was undone
    assert events()[3] == "4 2 2"
    assert state_of(project) == {"count": 5, "last": 6, "ids": [1, 2, 4, 5, 6]}
    assert project.scalar("SELECT count(*) FROM t") == 5


def test_a_row_rejected_at_the_chunks_end_takes_its_items_state_change_with_it(project):
    # db.insert rows are written at the chunk's end: id 13 breaks a CHECK there,
    # after the items behind it ran. Its change goes; theirs stay.
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
@ingestkit.source([{"id": i} for i in range(10, 17)], key="id")
def process_row(record, db, state):
    db.insert("t", {"id": record["id"]})
    state["count"] = state.get("count", 0) + 1
    state["seen_" + str(record["id"])] = True
    state["last"] = record["id"]
""",
    )
    result = project.run()
    assert result.counts == {"succeeded": 6, "failed": 1}
    value = state_of(project)
    # 13's own keys are undone; a key a later item set stays as that item left it
    assert "seen_13" not in value
    assert value["last"] == 16
    assert sorted(k for k in value if k.startswith("seen_")) == [
        f"seen_{i}" for i in (10, 11, 12, 14, 15, 16)
    ]
    assert project.scalar("SELECT count(*) FROM t") == 6


def test_a_replayed_chunk_does_not_count_its_state_changes_twice(project):
    # an item with statements whose buffered row fails at the chunk's end makes
    # the chunk run again, each item on its own: state rewinds with it
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
@ingestkit.source([{"id": i} for i in range(10, 17)], key="id")
def process_row(record, db, state):
    db.execute("SELECT 1")
    db.insert("t", {"id": record["id"]})
    state["count"] = state.get("count", 0) + 1
""",
    )
    result = project.run()
    assert result.counts == {"succeeded": 6, "failed": 1}
    assert state_of(project) == {"count": 6}
    assert project.scalar("SELECT count(*) FROM t") == 6


def test_a_processors_own_commit_rewinds_the_state_of_the_items_run_again(project):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
@ingestkit.source([{"id": i} for i in range(1, 6)], key="id")
def process_row(record, db, state):
    db.insert("t", {"id": record["id"]})
    state["count"] = state.get("count", 0) + 1
    if record["id"] == 4:
        db.execute("COMMIT")
""",
    )
    result = project.run()
    assert result.counts == {"succeeded": 4, "failed": 1}
    assert state_of(project) == {"count": 4}
    assert project.scalar("SELECT count(*) FROM t") == 4


def test_state_commits_with_the_chunk_that_changed_it(project):
    # the process dies in the middle of the third chunk: the state is what the
    # two committed chunks made it, and a rerun goes on from there
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
import os

@ingestkit.source([{"id": i} for i in range(1, 11)], key="id")
def process_row(record, db, state):
    db.insert("t", {"id": record["id"]})
    state["count"] = state.get("count", 0) + 1
    state["last"] = record["id"]
    if record["id"] == 6 and not os.environ.get("IK_NO_CRASH"):
        os._exit(9)
""",
    )
    crashed = project.cli("--chunk-size", "2")
    assert crashed.returncode == 9, crashed.stdout
    # the second chunk commits in the background while the third runs: it may
    # or may not have made it; the state is always what the committed items made it
    done = project.scalar("SELECT count(*) FROM ingestkit.items WHERE status = 'succeeded'")
    assert done in (2, 4)
    assert state_of(project) == {"count": done, "last": done}
    assert project.scalar("SELECT count(*) FROM t") == done
    again = project.cli("--chunk-size", "2", env={"IK_NO_CRASH": "1"})
    assert again.returncode == 0, again.stdout
    assert state_of(project) == {"count": 10, "last": 10}
    assert project.scalar("SELECT count(*) FROM t") == 10


def test_dry_run_leaves_the_state_untouched(project):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
import os

N = int(os.environ.get("IK_N", "3"))

@ingestkit.source([{"id": i} for i in range(1, N + 1)], key="id")
def process_row(record, db, state):
    db.insert("t", {"id": record["id"]})
    state["last"] = record["id"]
""",
    )
    dry = project.cli("--dry-run")
    assert dry.returncode == 0, dry.stdout
    assert state_rows(project) == {}
    assert project.cli().returncode == 0
    before = state_rows(project)
    assert before["ingest_rows.py::process_row"]["value"] == {"last": 3}
    dry = project.cli("--dry-run", env={"IK_N": "5"})
    assert dry.returncode == 0, dry.stdout
    assert state_rows(project) == before


def test_a_source_may_read_the_state_but_only_items_change_it(project):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
def rows(state):
    state["oops"] = 1
    return [{"id": 1}]

@ingestkit.source(rows, key="id")
def process_row(record, state):
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 1
    [item] = result.items
    assert item["status"] == "error"
    assert "only an item (a processor call) can change state" in item["error_message"]
    assert state_rows(project) == {}


def test_a_value_json_cannot_hold_fails_the_item_that_set_it(project):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
import datetime

@ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
def process_row(record, state):
    if record["id"] == 1:
        state["when"] = datetime.date(2026, 12, 1)  # kept as ISO text, as it will be read
        assert state["when"] == "2026-12-01"
    elif record["id"] == 2:
        state["bad"] = object()
    else:
        state["n"] = 3
""",
    )
    result = project.run()
    assert result.counts == {"succeeded": 2, "failed": 1}
    failed = result.by_key()["2"]
    assert failed["error_type"] == "TypeError"
    assert "state values must be JSON" in failed["error_message"]
    assert state_of(project) == {"when": "2026-12-01", "n": 3}


def test_each_processor_has_its_own_state(project):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
@ingestkit.source([{"id": 1}], key="id")
def process_row(record, state):
    state["a"] = 1

@ingestkit.source([{"id": 1}], key="id")
def process_other(record, state):
    assert "a" not in state
    state["b"] = 2
""",
    )
    assert project.run().exit_code == 0
    assert {k: v["value"] for k, v in state_rows(project).items()} == {
        "ingest_rows.py::process_row": {"a": 1},
        "ingest_rows.py::process_other": {"b": 2},
    }


def test_state_under_n_workers_is_a_usage_error(project):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
@ingestkit.source([{"id": 1}], key="id")
def process_row(record, state):
    state["a"] = 1

@ingestkit.source([{"id": 1}], key="id")
def process_plain(record):
    pass
""",
    )
    result = project.cli("-n", "2")
    assert result.returncode == 4, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    assert "ingest_rows.py::process_row" in lines[0]
    assert "state" in lines[0] and "-n" in lines[0]
    assert "Traceback" not in result.stdout
    # the others run with -n when the state's user is left out
    assert project.cli("-n", "2", "-k", "plain").returncode == 0


def test_the_state_fixture_is_listed(project):
    project.write("ingest_rows.py", SCHEMA)
    result = project.run("--fixtures")
    assert "state" in result.output
    assert "ingestkit.state" in result.output


def test_a_database_from_before_the_state_table_is_migrated(project):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
@ingestkit.source([{"id": 1}], key="id")
def process_row(record, state):
    state["seen"] = record["id"]
""",
    )
    assert project.run("-k", "nothing").exit_code == 5  # creates the schema
    project.query("DROP TABLE ingestkit.state")
    project.query("DELETE FROM ingestkit.schema_version")
    project.query("INSERT INTO ingestkit.schema_version (version) VALUES (3)")
    result = project.run()
    assert result.exit_code == 0, result.output
    assert state_of(project) == {"seen": 1}
    assert project.scalar("SELECT max(version) FROM ingestkit.schema_version") >= 4


def test_a_skipped_item_rolls_its_state_change_back_too(project):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
@ingestkit.source([{"id": i} for i in range(1, 5)], key="id")
def process_row(record, state):
    state["last"] = record["id"]
    if record["id"] == 4:
        ingestkit.skip("not this one")
""",
    )
    result = project.run()
    assert result.counts == {"succeeded": 3, "skipped": 1}
    assert state_of(project) == {"last": 3}


def test_every_dict_method_is_watched(project):
    project.write(
        "ingest_rows.py",
        SCHEMA
        + """
@ingestkit.source([{"id": i} for i in range(1, 4)], key="id")
def process_row(record, state):
    if record["id"] == 1:
        state.update({"a": 1, "b": 2, "c": 3}, d=4)
        state |= {"e": 5}
        del state["a"]
        assert state.pop("b") == 2
        assert sorted(state.items()) == [("c", 3), ("d", 4), ("e", 5)]
        assert sorted(state.values()) == [3, 4, 5]
        copy = state.copy()
        copy["c"] = 99  # a copy: the state does not change
        assert "State(" in repr(state)
    elif record["id"] == 2:
        state.popitem()
        state.clear()
        state["kept"] = True
        state[1] = "no"  # keys are strings: fails the item, undoing all of the above
    else:
        assert state == {"c": 3, "d": 4, "e": 5}
        state["z"] = 0
""",
    )
    result = project.run()
    assert result.counts == {"succeeded": 2, "failed": 1}
    assert "state keys must be strings" in result.by_key()["2"]["error_message"]
    assert state_of(project) == {"c": 3, "d": 4, "e": 5, "z": 0}
