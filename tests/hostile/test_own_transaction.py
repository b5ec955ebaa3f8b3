"""A processor that ends ingestkit's transaction itself (issue 21).

Whatever a processor does to the transaction (ROLLBACK, COMMIT, through
``db.execute`` or the raw connection), only its own item fails, and every other
item's outcome matches what is in the tables.
"""

from __future__ import annotations

import pytest

PIPELINE = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int)")  # no key: a double shows

@ingestkit.source([{"id": i} for i in range(1, 31)], key="id")
def process_row(record, db):
    WRITE
    if record["id"] == 13:
        ACTION
"""

WRITES = {
    "insert": 'db.insert("t", {"id": record["id"]})',
    "execute": 'db.execute("INSERT INTO t (id) VALUES (%s)", (record["id"],))',
}

ACTIONS = {
    "execute-rollback": 'db.execute("ROLLBACK")',
    "execute-commit": 'db.execute("COMMIT")',
    "execute-end": 'db.execute("SELECT 1; END")',
    "connection-rollback": "db.connection.rollback()",
    "connection-commit": "db.connection.commit()",
    "release-savepoint": 'db.execute("RELEASE SAVEPOINT ingestkit_item")',
}


def assert_outcomes_match_tables(project, culprits=frozenset({13})):
    items = {
        int(r["key"]): r["status"]
        for r in project.query(
            "SELECT DISTINCT ON (key) key, status FROM ingestkit.items"
            " ORDER BY key, finished_at DESC"
        )
    }
    assert {k for k, s in items.items() if s != "succeeded"} <= set(culprits)
    ids = [r["id"] for r in project.query("SELECT id FROM t")]
    assert len(ids) == len(set(ids)), "rows written twice"
    assert set(ids) == {k for k, s in items.items() if s == "succeeded"}
    assert set(items) == set(range(1, 31))


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_processor_ending_the_transaction_fails_only_its_item(project, action, write):
    project.write(
        "ingest_x.py", PIPELINE.replace("WRITE", WRITES[write]).replace("ACTION", ACTIONS[action])
    )
    result = project.run("--chunk-size", "10")
    assert "INTERNAL ERROR" not in result.output
    culprit = result.by_key()["13"]
    if action == "release-savepoint" and write == "insert":
        # no statement came after it in its chunk: releasing was harmless
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1, result.output
        assert culprit["status"] == "failed"
        assert "ended the transaction" in culprit["error_message"], culprit["error_message"]
    assert_outcomes_match_tables(project)
    # a plain rerun has nothing to add but the culprit
    again = project.run()
    assert again.counts.get("unchanged") == 29 + (culprit["status"] == "succeeded")
    assert_outcomes_match_tables(project)


def test_processor_ending_the_transaction_in_every_item(project):
    project.write(
        "ingest_x.py",
        PIPELINE.replace("WRITE", WRITES["execute"])
        .replace('if record["id"] == 13:', "if True:")
        .replace("ACTION", ACTIONS["execute-rollback"]),
    )
    result = project.run("--chunk-size", "10")
    assert result.exit_code == 1, result.output
    assert result.counts == {"failed": 30}
    assert project.query("SELECT id FROM t") == []


@pytest.mark.slow
def test_get_or_create_racing_across_workers(project):
    """Two workers creating the same new dimension row: both items succeed."""
    project.write(
        "ingest_x.py",
        """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS dim (id serial PRIMARY KEY, code text UNIQUE)")
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, dim_id int)")

@ingestkit.source([{"id": i, "code": f"c{i % 5}"} for i in range(1, 201)], key="id")
def process_row(record, db, lookup):
    dim_id = lookup.get_or_create("dim", code=record["code"])
    time.sleep(0.01)  # hold the new row uncommitted while the other worker wants it
    db.insert("t", {"id": record["id"], "dim_id": dim_id})
""",
    )
    result = project.run("-n", "2", "--chunk-size", "4")
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 200}
    assert project.scalar("SELECT count(*) FROM dim") == 5
    assert project.scalar("SELECT count(*) FROM t JOIN dim ON dim.id = t.dim_id") == 200
