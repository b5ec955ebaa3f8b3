"""SPEC §10: ``--prune --keep DAYS``, and ``ingestkit.items`` partitioned by month."""

import json
from pathlib import Path

import psycopg2
import pytest

import ingestkit.schema

#: Ten records whose content comes from data.json, so a run can change some.
ROWS = """
import json
import pathlib
import ingestkit

HERE = pathlib.Path(__file__).parent

def records():
    return json.loads((HERE / "data.json").read_text())

@ingestkit.source(records, key="id")
def process_row(record, db):
    if record["v"] == "bad":
        raise ValueError(f"bad value for {record['id']}")
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text)")
    db.execute(
        "INSERT INTO t VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
        (record["id"], record["v"]),
    )
"""
NODE = "ingest_rows.py::process_row"


def write_data(project, values: dict[int, str]) -> None:
    project.write("data.json", json.dumps([{"id": k, "v": v} for k, v in values.items()]))


def age_batch(project, batch_id: str, days: int) -> None:
    """Make a batch and its outcome rows look ``days`` days old (rows change partition)."""
    project.query(
        "UPDATE ingestkit.batches SET started_at = started_at - make_interval(days => %(d)s),"
        " finished_at = finished_at - make_interval(days => %(d)s) WHERE id = %(id)s;"
        " UPDATE ingestkit.outcomes SET finished_at = finished_at - make_interval(days => %(d)s)"
        " WHERE batch_no = (SELECT no FROM ingestkit.batches WHERE id = %(id)s);"
        " UPDATE ingestkit.latest SET finished_at = finished_at - make_interval(days => %(d)s)"
        " WHERE batch_id = %(id)s",
        {"d": days, "id": batch_id},
    )


def partitions(project) -> dict[str, int]:
    """Partitions of ingestkit.outcomes (the rows of ingestkit.items) and how many rows
    each holds."""
    names = [
        r["name"]
        for r in project.query(
            "SELECT c.relname AS name FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid"
            " WHERE h.inhparent = 'ingestkit.outcomes'::regclass"
        )
    ]
    return {
        n: project.scalar(
            "SELECT count(*) FROM ingestkit.outcomes WHERE tableoid = %s::regclass",
            (f"ingestkit.{n}",),
        )
        for n in names
    }


def latest_rows_present(project) -> int:
    """Keys whose latest outcome (ingestkit.latest) has no row in ingestkit.items."""
    return project.scalar(
        "SELECT count(*) FROM ingestkit.latest l WHERE NOT EXISTS ("
        " SELECT 1 FROM ingestkit.items i WHERE i.processor = l.processor AND i.key = l.key"
        " AND i.batch_id = l.batch_id)"
    )


def test_a_batch_writes_its_items_into_this_months_partition(project):
    write_data(project, {i: "a" for i in range(1, 4)})
    project.write("ingest_rows.py", ROWS)
    assert project.run().exit_code == 0
    month = project.scalar("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')")
    after = project.scalar(
        "SELECT to_char((now() AT TIME ZONE 'UTC') + interval '1 month', 'YYYY_MM')"
    )
    parts = partitions(project)
    assert parts[f"items_{month}"] == 3, parts
    assert parts[f"items_{after}"] == 0 and parts["items_default"] == 0, parts
    assert (
        project.scalar("SELECT relkind FROM pg_class WHERE oid = 'ingestkit.outcomes'::regclass")
        == "p"
    )
    # the next batch finds them made: no DDL
    assert project.run("--reprocess").exit_code == 0
    assert partitions(project)[f"items_{month}"] == 6


def test_prune_keeps_every_keys_latest_outcome_and_drops_whole_old_months(project):
    """Three batches: 120 days old (every key ran again later), 60 days old (some
    keys ran again later, one failed) and today's. --prune --keep 20 drops the
    oldest month, rebuilds the next with its latest outcomes, keeps today's."""
    project.write("ingest_rows.py", ROWS)
    # old months get partitions of their own, as they would have had then
    assert project.run("--batches").exit_code == 0  # the schema
    project.query("SELECT ingestkit.add_items_partitions(now() - interval '120 days', 4)")
    write_data(project, {i: "a" for i in range(1, 11)})
    first = project.run()
    assert first.counts == {"succeeded": 10}
    write_data(project, {i: ("bad" if i == 7 else "b") for i in range(1, 11)})
    second = project.run()
    assert second.counts == {"succeeded": 9, "failed": 1}
    write_data(project, {i: ("c" if i <= 6 else "bad" if i == 7 else "b") for i in range(1, 11)})
    third = project.run(*[f"{NODE}[{i}]" for i in range(1, 7)])
    assert third.counts == {"succeeded": 6}, third.output
    age_batch(project, first.batch_id, 120)
    age_batch(project, second.batch_id, 60)
    before = partitions(project)
    assert sum(before.values()) == 26 and before["items_default"] == 0, before
    assert project.scalar("SELECT count(*) FROM ingestkit.batches") == 3

    pruned = project.run("--prune", "--keep", "20")
    assert pruned.exit_code == 0, pruned.output
    # batch 1: all 10 superseded; batch 2: keys 1-6 superseded, 7-10 are latest
    assert "pruned 16 outcome row(s) and 1 batch row(s) of 2 batch(es) older than 20 days" in (
        pruned.output
    ), pruned.output
    assert "kept 4 of their outcome rows" in pruned.output
    assert "1 dropped, 1 rebuilt" in pruned.output
    after = partitions(project)
    assert sum(after.values()) == 10, after
    assert len(after) == len(before) - 1
    assert latest_rows_present(project) == 0
    assert (
        project.scalar(
            "SELECT count(*) FROM ingestkit.items WHERE batch_id = %s", (first.batch_id,)
        )
        == 0
    )
    assert (
        project.scalar(
            "SELECT count(*) FROM ingestkit.items WHERE batch_id = %s", (second.batch_id,)
        )
        == 4
    )
    assert (
        project.scalar(
            "SELECT count(*) FROM ingestkit.items WHERE batch_id = %s", (third.batch_id,)
        )
        == 6
    )
    batches = {str(r["id"]) for r in project.query("SELECT id FROM ingestkit.batches")}
    assert batches == {second.batch_id, third.batch_id}  # the 2nd: latest outcomes refer to it
    # the target table is untouched (key 7 keeps the row of its first success)
    assert project.scalar("SELECT count(*) FROM t") == 10
    assert project.scalar("SELECT count(*) FROM ingestkit.latest WHERE status = 'succeeded'") == 9

    # looking back still works on what is left
    trace = json.loads(project.run("--trace", f"{NODE}[7]", "--json").output)
    assert [(t["status"], str(t["batch_id"])) for t in trace] == [("failed", second.batch_id)]
    trace1 = json.loads(project.run("--trace", f"{NODE}[1]", "--json").output)
    assert [str(t["batch_id"]) for t in trace1] == [third.batch_id]
    shown = project.run("--show", second.batch_id)
    assert "process_row[7] FAILED ValueError: bad value for 7" in shown.output
    # --lf feeds the failure from its stored record; "already ingested" still holds
    write_data(project, {i: "c" if i <= 6 else "b" for i in range(1, 11)})
    rerun = project.run("--lf")
    assert rerun.exit_code == 1 and rerun.counts == {"failed": 1}, rerun.output
    assert [i["attempt"] for i in rerun.items] == [2]
    again = project.run()
    assert again.exit_code == 0 and again.counts == {"succeeded": 1, "unchanged": 9}, again.output

    # key 7's failure of batch 2 is no longer its latest outcome: the next prune takes it
    again = project.run("--prune", "--keep", "20").output
    assert "pruned 1 outcome row(s) and 0 batch row(s) of 1 batch(es)" in again, again
    assert "kept 3 of their outcome rows" in again
    assert "pruned 0 outcome row(s)" in project.run("--prune", "--keep", "20").output


def test_prune_deletes_row_by_row_where_a_month_is_not_all_old(project):
    """Rows of old batches in a partition that also holds new rows (here the
    default one) are deleted row by row; --keep 0 keeps only latest outcomes."""
    project.write("ingest_rows.py", ROWS)
    write_data(project, {i: "a" for i in range(1, 6)})
    first = project.run()
    age_batch(project, first.batch_id, 400)  # no partition for that month: the default one
    assert partitions(project)["items_default"] == 5
    second = project.run("--reprocess")
    assert second.counts == {"succeeded": 5}
    pruned = project.run("--prune", "--keep", "30", "--json")
    assert pruned.exit_code == 0, pruned.output
    result = json.loads(pruned.output)
    assert (result["items"], result["batches"], result["kept"]) == (5, 1, 0), result
    assert partitions(project)["items_default"] == 0
    # --keep 0: everything but the latest outcomes
    third = project.run("--reprocess")
    result = json.loads(project.run("--prune", "--keep", "0", "--json").output)
    assert (result["items"], result["kept"]) == (5, 5), result
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 5
    assert {str(r["batch_id"]) for r in project.query("SELECT batch_id FROM ingestkit.items")} == {
        third.batch_id
    }
    assert latest_rows_present(project) == 0


def test_prune_usage_errors_are_one_line(project):
    for args, message in (
        (("--prune",), "--prune needs --keep DAYS"),
        (("--keep", "3"), "--keep DAYS goes with --prune"),
        (("--prune", "--keep", "-1"), "--keep takes a number of days, 0 or more"),
        (("--prune", "--keep", "x"), "argument --keep: invalid float value"),
        (("--prune", "--keep", "nan"), "--keep takes a number of days, 0 or more, not nan"),
        (("--prune", "--keep", "1e12"), "--keep takes a number of days, 0 or more, not 1e+12"),
    ):
        result = project.run(*args)
        assert result.exit_code == 4, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


SLOW = """
import time
import ingestkit

@ingestkit.source(({"id": i} for i in range(1, 1501)), key="id")
def process_slow(record, db):
    time.sleep(0.004)
    db.execute("INSERT INTO s VALUES (%s)", (record["id"],))
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_runs_go_on_while_prune_drops_and_rebuilds_partitions(project, workers):
    """A batch (in one process, or on -n 2 workers) commits chunks while --prune
    detaches, drops and rebuilds old partitions: both finish, nothing is lost."""
    project.write("ingest_rows.py", ROWS)
    project.write("ingest_slow.py", SLOW)
    assert project.run("--batches").exit_code == 0  # the schema
    project.query("SELECT ingestkit.add_items_partitions(now() - interval '120 days', 4)")
    project.query("CREATE TABLE s (id int PRIMARY KEY)")  # not by two workers at once
    write_data(project, {i: "a" for i in range(1, 11)})
    first = project.run("-k", "row")
    write_data(project, {i: "b" if i <= 6 else "a" for i in range(1, 11)})
    second = project.run("-k", "row", "--reprocess")
    third = project.run("-k", "row", *[f"{NODE}[{i}]" for i in range(1, 7)], "--reprocess")
    assert (first.exit_code, second.exit_code, third.exit_code) == (0, 0, 0)
    age_batch(project, first.batch_id, 120)
    age_batch(project, second.batch_id, 60)

    run = project.spawn("-k", "slow", *(("-n", str(workers)) if workers else ()))
    try:
        project.wait_for_items(26 + 200)
        pruned = project.cli("--prune", "--keep", "20")
        during = project.scalar(
            "SELECT count(*) FROM ingestkit.items i JOIN ingestkit.batches b ON b.id = i.batch_id"
            " WHERE b.status = 'running'"
        )
        out, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert pruned.returncode == 0, pruned.stdout
    assert "pruned 16 outcome row(s) and 1 batch row(s)" in pruned.stdout, pruned.stdout
    assert "1 dropped, 1 rebuilt" in pruned.stdout, pruned.stdout
    assert 0 < during < 1500, during  # the prune ran while the batch did
    assert run.returncode == 0, out
    assert project.scalar("SELECT count(*) FROM s") == 1500
    slow = project.query(
        "SELECT status, count(*) AS n, count(DISTINCT key) AS keys FROM ingestkit.items"
        " WHERE processor = 'ingest_slow.py::process_slow' GROUP BY status"
    )
    assert slow == [{"status": "succeeded", "n": 1500, "keys": 1500}], slow
    assert latest_rows_present(project) == 0


# -- migration 0005 -----------------------------------------------------------------

V3_SCHEMA = Path(__file__).parent / "data" / "schema_v3.sql"
#: schema.sql as version 10 had it: ingestkit.items a partitioned table.
V10_SCHEMA = Path(__file__).parent / "data" / "schema_v10.sql"


def test_a_version_3_history_is_partitioned_without_losing_a_row(project):
    """A database of the previous release (schema version 3, items unpartitioned,
    with history from two months) is migrated by the next run: its rows are all
    still there, in a partition of the new table, and prune works on them."""
    conn = psycopg2.connect(project.dsn)
    with conn.cursor() as cur:
        cur.execute("CREATE SCHEMA ingestkit")
        cur.execute(V3_SCHEMA.read_text())
        cur.execute("INSERT INTO ingestkit.schema_version (version) VALUES (3)")
        # what a version-3 run recorded: a batch 90 days ago, one yesterday
        for batch, days, status in (
            ("00000000-0000-0000-0000-000000000001", 90, "succeeded"),
            ("00000000-0000-0000-0000-000000000002", 1, "failed"),
        ):
            cur.execute(
                "INSERT INTO ingestkit.batches (id, started_at, finished_at, status, exit_code,"
                " counts) VALUES (%s, now() - make_interval(days => %s),"
                " now() - make_interval(days => %s), 'finished', 0, '{}')",
                (batch, days, days),
            )
            cur.execute(
                "INSERT INTO ingestkit.items (batch_id, processor, key, status, content_hash,"
                " duration_ms, error_type, error_message, payload, finished_at)"
                " SELECT %s, %s, k::text, %s, 'h' || k, 0.5,"
                " CASE WHEN %s = 'failed' THEN 'ValueError' END,"
                " CASE WHEN %s = 'failed' THEN 'bad' END,"
                " CASE WHEN %s = 'failed' THEN jsonb_build_object('id', k, 'v', 'bad') END,"
                " now() - make_interval(days => %s)"
                " FROM generate_series(1, 10) k WHERE %s = 'succeeded' OR k = 7",
                (batch, NODE, status, status, status, status, days, status),
            )
        cur.execute(
            "INSERT INTO ingestkit.latest (processor, key, batch_id, status, attempt, content_hash,"
            " error_message, payload, finished_at, succeeded_hash)"
            " SELECT processor, key, batch_id, status, attempt, content_hash, error_message,"
            " payload, finished_at, CASE WHEN status = 'succeeded' THEN content_hash END"
            " FROM (SELECT DISTINCT ON (key) * FROM ingestkit.items"
            " ORDER BY key, finished_at DESC) last"
        )
    conn.commit()
    conn.close()
    before = project.query("SELECT * FROM ingestkit.items ORDER BY finished_at, key")
    assert len(before) == 11

    project.write("ingest_rows.py", ROWS)
    write_data(project, {i: "a" for i in range(1, 11)})
    migrated = project.run("--batches")
    assert migrated.exit_code == 0, migrated.output
    versions = [r["version"] for r in project.query("SELECT version FROM ingestkit.schema_version")]
    assert versions[0] == 3 and versions[-1] == ingestkit.schema.current_version(), versions
    assert (
        project.scalar("SELECT relkind FROM pg_class WHERE oid = 'ingestkit.items'::regclass")
        == "v"
    )
    after = project.query("SELECT * FROM ingestkit.items ORDER BY finished_at, key")
    assert [{c: row[c] for c in before[0]} for row in after] == before  # later columns added
    # the rows moved into monthly partitions of ingestkit.outcomes (0011), none lost
    parts = partitions(project)
    assert sum(parts.values()) == 11 and parts["items_default"] == 0, parts
    indexes = {
        r["indexname"]
        for r in project.query("SELECT indexname FROM pg_indexes WHERE tablename = 'outcomes'")
    }
    assert indexes == {"items_batch_status_idx", "items_key_idx", "items_changes_idx"}, indexes
    # the trace reads the old rows; the run after the migration writes into the new month
    trace = json.loads(project.run("--trace", f"{NODE}[7]", "--json").output)
    assert [t["status"] for t in trace] == ["succeeded", "failed"]
    run = project.run()
    assert run.exit_code == 0, run.output
    assert run.counts == {"succeeded": 10}  # the content hashes differ from the fake ones
    month = project.scalar("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')")
    parts = partitions(project)
    # the old rows kept their months (0011 copied them into monthly partitions)
    assert sum(parts.values()) == 21 and parts[f"items_{month}"] >= 10, parts
    # prune: the month 90 days back is all old, and none of its rows is a latest outcome
    result = json.loads(project.run("--prune", "--keep", "30", "--json").output)
    assert (result["items"], result["batches"]) == (10, 1), result
    assert result["dropped"] >= 1, result
    assert latest_rows_present(project) == 0
    # and the migration does not run twice
    assert project.run("--batches").exit_code == 0
    assert len(project.query("SELECT version FROM ingestkit.schema_version")) == len(versions)


def test_partitions_are_made_once_when_batches_start_at_once(project):
    """Two runs that start at once both want this month's partition: one makes it."""
    project.write("ingest_rows.py", ROWS)
    write_data(project, {i: "a" for i in range(1, 4)})
    assert project.run("--batches").exit_code == 0  # the schema, without partitions yet
    procs = [project.spawn("--reprocess", "--dry-run") for _ in range(3)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    month = project.scalar("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')")
    assert f"items_{month}" in partitions(project)


def test_a_version_10_history_moves_into_compact_rows_without_changing_a_value(project):
    """Migration 0011: ingestkit.items, a table up to version 10, becomes a view over
    ingestkit.outcomes; every row reads back as it was (hashes too, one that is not
    32 hex digits included), in the same months, and the next run writes on."""
    hexhash = "0123456789abcdef0123456789abcdef"
    conn = psycopg2.connect(project.dsn)
    with conn.cursor() as cur:
        cur.execute("CREATE SCHEMA ingestkit")
        cur.execute(V10_SCHEMA.read_text())
        cur.execute("INSERT INTO ingestkit.schema_version (version) VALUES (10)")
        cur.execute("SELECT ingestkit.add_items_partitions(now() - interval '40 days', 3)")
        for batch, days in (("00000000-0000-0000-0000-000000000001", 40), (None, 1)):
            cur.execute(
                "INSERT INTO ingestkit.batches (id, started_at, finished_at, status, exit_code)"
                " VALUES (coalesce(%s::uuid, gen_random_uuid()), now() - make_interval(days => %s),"
                " now() - make_interval(days => %s), 'finished', 1) RETURNING id",
                (batch, days, days),
            )
            batch_id = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO ingestkit.items (batch_id, processor, key, status, attempt,"
                " content_hash, duration_ms, error_type, error_message, traceback, payload,"
                " finished_at, location, changes)"
                " SELECT %s, %s, k::text, CASE WHEN k = 7 THEN 'failed' ELSE 'succeeded' END,"
                " 1, CASE WHEN k = 3 THEN 'h3' ELSE %s END, k / 3.0,"
                " CASE WHEN k = 7 THEN 'ValueError' END, CASE WHEN k = 7 THEN 'bad' END,"
                " CASE WHEN k = 7 THEN 'Traceback...' END,"
                " CASE WHEN k = 7 THEN jsonb_build_object('id', k) END,"
                " now() - make_interval(days => %s), 'data.json#' || k,"
                ' CASE WHEN k = 5 THEN \'{"v": ["a", "b"]}\'::jsonb END'
                " FROM generate_series(1, 10) k",
                (batch_id, NODE, hexhash, days),
            )
        # a batch row deleted by hand, its rows left (no foreign key: see 0003)
        cur.execute(
            "INSERT INTO ingestkit.items (batch_id, processor, key, status, finished_at)"
            " VALUES ('00000000-0000-0000-0000-0000000000ff', 'gone.py::process', 'x',"
            " 'succeeded', now() - interval '2 days')"
        )
        cur.execute(
            "INSERT INTO ingestkit.latest (processor, key, batch_id, status, attempt, content_hash,"
            " error_message, payload, finished_at, succeeded_hash)"
            " SELECT DISTINCT ON (processor, key) processor, key, batch_id, status, attempt,"
            " content_hash, error_message, payload, finished_at,"
            " CASE WHEN status = 'succeeded' THEN content_hash END"
            " FROM ingestkit.items ORDER BY processor, key, finished_at DESC"
        )
    conn.commit()
    conn.close()
    before = project.query("SELECT * FROM ingestkit.items ORDER BY finished_at, processor, key")
    assert len(before) == 21

    project.write("ingest_rows.py", ROWS)
    write_data(project, {i: "a" for i in range(1, 11)})
    migrated = project.run("--batches")
    assert migrated.exit_code == 0, migrated.output
    assert project.scalar("SELECT max(version) FROM ingestkit.schema_version") == (
        ingestkit.schema.current_version()
    )
    assert (
        project.scalar("SELECT relkind FROM pg_class WHERE oid = 'ingestkit.items'::regclass")
        == "v"
    )
    after = project.query("SELECT * FROM ingestkit.items ORDER BY finished_at, processor, key")
    assert after == before
    assert (
        project.scalar("SELECT content_hash FROM ingestkit.items WHERE key = '3' LIMIT 1") == "h3"
    )
    parts = partitions(project)
    assert sum(parts.values()) == 21 and parts["items_default"] == 0, parts
    assert "hashtextextended(key, (0)::bigint)" in project.scalar(
        "SELECT pg_get_indexdef('ingestkit.items_key_idx'::regclass)"
    )
    trace = json.loads(project.run("--trace", f"{NODE}[7]", "--json").output)
    assert [t["status"] for t in trace] == ["failed", "failed"]
    run = project.run()
    assert run.exit_code == 0, run.output
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 21 + run.counts["succeeded"]


def test_a_hash_that_is_not_32_hex_digits_is_kept_as_text_on_the_next_outcome(project):
    """The recorder stores a content hash of 32 hex digits as a uuid and any other
    (a version-10 row's, a plugin's) as text: --lf re-feeds a failed key with the
    hash it has in ingestkit.latest, and its new outcome shows that hash again."""
    project.write("ingest_rows.py", ROWS)
    write_data(project, {1: "a", 2: "bad"})
    assert project.run().exit_code == 1
    project.query(
        "UPDATE ingestkit.latest SET content_hash = 'legacy-2' WHERE key = '2';"
        " UPDATE ingestkit.latest SET payload = '{\"id\": 2, \"v\": \"fixed\"}' WHERE key = '2'"
    )
    result = project.run("--lf")
    assert result.exit_code == 0, result.output
    rows = project.query(
        "SELECT i.key, i.status, i.content_hash, o.content_hash IS NOT NULL AS as_uuid"
        " FROM ingestkit.items i JOIN ingestkit.outcomes o"
        " ON o.key = i.key AND o.finished_at = i.finished_at ORDER BY i.finished_at"
    )
    assert [(r["key"], r["status"], r["as_uuid"]) for r in rows] == [
        ("1", "succeeded", True),
        ("2", "failed", True),
        ("2", "succeeded", False),
    ]
    assert rows[2]["content_hash"] == "legacy-2"
    assert len(rows[0]["content_hash"]) == 32
