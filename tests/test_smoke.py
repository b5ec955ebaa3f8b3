"""End to end: a folder of ingest files, one command, outcomes in ingestkit.items."""

import ingestkit  # noqa: F401

PIPELINE = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text NOT NULL)")

@ingestkit.source([{"id": i, "v": None if i % 7 == 0 else f"v{i}"} for i in range(1, 30)], key="id")
def process_row(record, db):
    if record["id"] == 13:
        raise ValueError("unlucky 13")
    db.insert("t", record)
"""


def test_run_records_every_item(project):
    project.write("ingest_rows.py", PIPELINE)
    result = project.run()
    assert result.exit_code == 1, result.output
    statuses = result.statuses()
    assert len(statuses) == 29
    failed = sorted(int(k) for k, s in statuses.items() if s == "failed")
    assert failed == [7, 13, 14, 21, 28]
    assert project.scalar("SELECT count(*) FROM t") == 24
    assert result.counts == {"succeeded": 24, "failed": 5}
    assert "rerun the failures: ingestkit --lf" in result.output

    again = project.run()
    assert again.counts == {"failed": 5, "unchanged": 24}
