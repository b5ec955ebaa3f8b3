"""Issue 15: the failure lifecycle (SPEC §9): retired failures, --forget, what changed."""

import json

import pytest

ROWS = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def table(db):
    db.execute("CREATE TABLE IF NOT EXISTS rows (id int PRIMARY KEY, w int)")

@ingestkit.source(ingestkit.read_csv("rows.csv"), key="id")
def process_row(record, db):
    if not record["w"].isdigit():
        raise ValueError(f"w is not a number: {record['w']!r}")
    db.upsert("rows", {"id": int(record["id"]), "w": int(record["w"])})
"""
NODE = "ingest_rows.py::process_row"


def write_rows(project, rows):
    project.write("rows.csv", "id,w\n" + "".join(f"{k},{w}\n" for k, w in rows))


def latest(project):
    return {
        r["key"]: (r["status"], r["retired_batch"] is not None)
        for r in project.query("SELECT key, status, retired_batch FROM ingestkit.latest")
    }


def test_failures_gone_from_the_source_are_retired_and_lf_comes_back_clean(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, "x"), (3, "y"), (4, 40)])
    assert project.run().exit_code == 1
    write_rows(project, [(1, 10), (3, "y"), (4, 40)])  # 2 deleted from the source
    second = project.run()
    assert second.exit_code == 1
    assert "1 earlier failure is gone from the source, retired" in second.output
    assert latest(project)["2"] == ("failed", True)
    lf = project.run("--lf")
    assert [i["key"] for i in lf.items] == ["3"]  # not the retired 2
    write_rows(project, [(1, 10), (4, 40)])
    project.run()
    nothing = project.run("--lf")
    assert nothing.exit_code == 0
    assert "nothing to rerun" in nothing.output


def test_a_narrowed_read_retires_nothing(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, "x"), (3, "y")])
    project.run()
    write_rows(project, [(1, 11)])
    project.run(f"{NODE}[1]")
    project.run("--lf")
    project.run("--ff")
    project.run("--dry-run")
    assert latest(project)["2"] == ("failed", False)
    assert latest(project)["3"] == ("failed", False)


def test_a_retired_key_that_comes_back_runs_and_is_fed_by_lf_again(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, "x")])
    project.run()
    write_rows(project, [(1, 10)])
    project.run()
    assert latest(project)["2"] == ("failed", True)
    write_rows(project, [(1, 10), (2, "z")])
    back = project.run()
    assert back.statuses() == {"2": "failed"}
    assert latest(project)["2"] == ("failed", False)
    assert [i["key"] for i in project.run("--lf").items] == ["2"]


def test_changed_records_are_summarized_and_traced(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 99), (2, 20), (3, 30)])
    project.run()
    stored = project.query("SELECT key, record FROM ingestkit.latest ORDER BY key")
    assert stored[0]["record"] == {"id": "1", "w": "99"}
    # items keep no succeeded records by default (store_payloads = latest)
    assert project.scalar("SELECT count(payload) FROM ingestkit.items") == 0
    write_rows(project, [(1, 100), (2, 20), (3, 30)])
    second = project.run()
    assert second.counts == {"succeeded": 1, "unchanged": 2}
    assert f"{NODE}: 1 changed record" in second.output
    assert '[1] w: "99" → "100"' in second.output
    trace = project.run("--trace", f"{NODE}[1]")
    assert 'w: "99" → "100"' in trace.output
    as_json = json.loads(project.run("--trace", f"{NODE}[1]", "--json").output)
    assert as_json[-1]["changes"] == {"w": ["99", "100"]}
    # --reprocess runs the same records again: the kept records stay, unchanged
    assert project.run("--reprocess").counts == {"succeeded": 3}
    kept = project.query("SELECT key, record FROM ingestkit.latest ORDER BY key")
    assert [r["record"]["w"] for r in kept] == ["100", "20", "30"]
    assert project.scalar("SELECT count(*) FROM ingestkit.items WHERE changes IS NOT NULL") == 1


def test_store_payloads_failed_keeps_no_succeeded_record(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 99)])
    project.run("--store-payloads", "failed")
    assert project.scalar("SELECT record FROM ingestkit.latest") is None
    write_rows(project, [(1, 100)])
    second = project.run("--store-payloads", "failed")
    assert "changed record" not in second.output


def test_show_when_piped_gives_location_whole_message_and_record(project):
    project.write(
        "ingest_long.py",
        """
        import ingestkit

        @ingestkit.source(ingestkit.read_csv("rows.csv"), key="id")
        def process_long(record):
            raise ValueError("w is bad: " + "x" * 300 + "\\nsecond line of the message")
        """,
    )
    write_rows(project, [(1, "wide")])
    project.run()
    shown = project.cli("--show")
    assert shown.returncode == 0
    out = shown.stdout
    assert "ingest_long.py::process_long[1] FAILED ValueError: w is bad: " + "x" * 300 in out
    assert "at: rows.csv:2" in out
    assert "second line of the message" in out
    record = next(line for line in out.splitlines() if line.strip().startswith("record: "))
    assert json.loads(record.split("record: ", 1)[1]) == {"id": "1", "w": "wide"}


def test_show_trace_and_batches_show_retired_keys(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, "x")])
    project.run()
    write_rows(project, [(1, 10)])
    retiring = project.run()
    shown = project.run("--show", retiring.batch_id, "--status", "all")
    assert f"retired (gone from the source, --lf no longer feeds them): {NODE}[2]" in shown.output
    trace = project.run("--trace", f"{NODE}[2]")
    assert f"retired by batch {retiring.batch_id[:8]}" in trace.output
    assert f"1 retired failure(s) (gone from their source; --lf does not feed them): {NODE} 1" in (
        project.run("--batches").output
    )


def test_forget_stops_lf_feeding_and_leaves_an_audit_row(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, "x"), (3, "y")])
    first = project.run()
    forgot = project.cli("--forget", f"{NODE}[2]", "--reason", "vendor row, never fixable")
    assert forgot.returncode == 0, forgot.stdout
    assert "1 failure forgotten in batch" in forgot.stdout
    rows = project.query(
        "SELECT batch_id, status, error_type, error_message FROM ingestkit.items"
        " WHERE key = '2' ORDER BY finished_at"
    )
    assert [(r["status"], r["error_type"]) for r in rows] == [
        ("failed", "ValueError"),
        ("skipped", "Forgotten"),
    ]
    assert rows[1]["error_message"] == "vendor row, never fixable"
    assert str(rows[1]["batch_id"]) != first.batch_id
    batch = project.query(
        "SELECT status, counts, meta FROM ingestkit.batches WHERE id = %s", (rows[1]["batch_id"],)
    )[0]
    assert batch["status"] == "finished" and batch["counts"]["skipped"] == 1
    assert batch["meta"]["forget"]["reason"] == "vendor row, never fixable"
    assert [i["key"] for i in project.run("--lf").items] == ["3"]
    # -k selects by processor, as a run does
    assert project.cli("--forget", "-k", "row", "--reason", "all of them").returncode == 0
    assert "nothing to rerun" in project.run("--lf").output


def test_forget_bad_usage_is_one_line_and_exit_4(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, "x")])
    project.run()
    no_reason = project.cli("--forget", f"{NODE}[2]")
    assert no_reason.returncode == 4 and "--reason" in no_reason.stdout
    assert "Traceback" not in no_reason.stdout
    no_selection = project.cli("--forget", "--reason", "r")
    assert no_selection.returncode == 4 and "needs a selection" in no_selection.stdout
    not_failing = project.cli("--forget", f"{NODE}[1]", "--reason", "r")
    assert not_failing.returncode == 4
    assert f"no failed or error item {NODE}[1]" in not_failing.stdout
    assert project.scalar("SELECT status FROM ingestkit.latest WHERE key = '2'") == "failed"


def test_a_dry_run_does_not_suggest_lf(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, "x")])
    dry = project.run("--dry-run")
    assert dry.exit_code == 1
    assert "rerun the failures" not in dry.output
    assert "dry run: every write was rolled back" in dry.output
    assert "nothing to rerun" in project.run("--lf").output


def test_a_node_id_whose_key_matches_no_record_is_one_line_and_exit_4(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, 20)])
    project.run()
    typo = project.cli(f"{NODE}[7777]")
    assert typo.returncode == 4, typo.stdout
    assert typo.stdout.count(f"not found: {NODE}[7777]") == 1
    found = project.cli(f"{NODE}[2]", f"{NODE}[9]")
    assert found.returncode == 4
    assert f"not found: {NODE}[9]" in found.stdout and f"{NODE}[2]]" not in found.stdout
    assert project.cli(f"{NODE}[2]").returncode == 0  # unchanged, but found


def test_an_undecodable_record_keeps_its_real_key_when_its_key_field_reads(project):
    project.write("ingest_rows.py", ROWS)
    project.write("rows.csv", b"id,w\n1,10\n2,2\xe90\n\xe93,30\n")
    first = project.run()
    assert first.statuses() == {"1": "succeeded", "2": "error", "#3": "error"}
    assert "line 3: invalid UTF-8 byte 0xe9" in first.by_key()["2"]["error_message"]
    project.write("rows.csv", "id,w\n1,10\n2,20\n3,30\n")
    fixed = project.run()
    assert fixed.statuses() == {"2": "succeeded", "3": "succeeded"}
    assert latest(project)["#3"] == ("error", True)  # its position read cleanly: retired
    assert "nothing to rerun" in project.run("--lf").output


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one process", "workers"])
def test_a_duplicate_key_says_whether_its_content_differs_and_where_the_first_was(
    project, workers
):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, 20), (1, 10), (2, 21)])
    run = project.run(*workers)
    messages = sorted(i["error_message"] for i in run.items if i["error_type"] == "DuplicateKey")
    assert messages == [
        "duplicate key '1' in this batch (rows.csv:4); it has the same content as"
        " the first record with this key (rows.csv:2), already processed",
        "duplicate key '2' in this batch (rows.csv:5); it has content that differs"
        " from the first record with this key (rows.csv:3), already processed",
    ]


# -- issue 15's incident, on generated data ------------------------------------

PLAYERS = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def tables(db):
    db.execute("CREATE TABLE IF NOT EXISTS players (id int PRIMARY KEY, name text NOT NULL)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS scores (id int PRIMARY KEY,"
        " player_id int NOT NULL REFERENCES players, year int NOT NULL, amount numeric NOT NULL)"
    )

@ingestkit.source(ingestkit.read_csv("data/players.csv"), key="player_id")
def process_player(record, db):
    db.upsert("players", {"id": int(record["player_id"]), "name": record["name"]})
"""
SCORES = """
import ingestkit

@ingestkit.source(ingestkit.read_csv("data/scores.csv"), key="id")
def process_score(record, db, lookup):
    player = lookup("players", returning="id", id=int(record["player_id"]))
    db.upsert(
        "scores",
        {"id": int(record["id"]), "player_id": player, "year": int(record["year"]),
         "amount": AMOUNT},
    )
"""


def scores_csv(rows):
    return "id,player_id,year,amount\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)


def test_the_incident_is_resolved_in_four_commands_and_nothing_changes_silently(project):
    """Issue 15: load, corrupt as real drops go wrong, resolve with ingestkit alone."""
    players = [(n, f"Player {n}") for n in range(1, 21)]
    players[6] = (7, "Muller")
    good_scores = [
        (i, 1 + i % 20, 1990 + i % 30, f'"{1000 + i}.50"' if i in (30, 31) else f"{i}.25")
        for i in range(1, 51)
    ]
    amount = 'record["amount"]'
    project.write("ingest_players.py", PLAYERS)
    project.write("ingest_scores.py", SCORES.replace("AMOUNT", amount))
    project.write(
        "data/players.csv", "player_id,name\n" + "".join(f"{n},{m}\n" for n, m in players)
    )
    project.write("data/scores.csv", scores_csv(good_scores))
    load = project.run()
    assert load.exit_code == 0, load.output
    assert load.counts == {"succeeded": 70}

    # the drop that went wrong
    corrupt = [list(r) for r in good_scores[:49]]  # id 50 comes last, cut short
    corrupt[9][2] = corrupt[10][2] = "19x8"  # non-numeric years (ids 10, 11)
    corrupt[29][3], corrupt[30][3] = '"1,030.50"', '"1,031.50"'  # comma amounts (30, 31)
    corrupt += [[100 + n, 999, 2001, "1.00"] for n in range(1, 6)]  # an unknown player
    corrupt.insert(25, [20, 1, 2010, "99.00"])  # id 20 again, changed
    last = ",".join(map(str, good_scores[49]))
    project.write("data/scores.csv", scores_csv(corrupt) + last[: last.rindex(",")])
    latin1 = "player_id,name\n" + "".join(f"{n},{'Müller' if n == 7 else m}\n" for n, m in players)
    project.write("data/players.csv", latin1.encode("latin-1"))

    # 1. the run: every fault found, with file, line and key
    run = project.cli()
    assert run.returncode == 1
    failed = {
        (r["processor"].split("::")[1], r["key"]): r
        for r in project.query(
            "SELECT processor, key, status, error_message FROM ingestkit.latest"
            " WHERE status IN ('failed', 'error')"
        )
    }
    assert set(failed) == {
        ("process_player", "7"),  # its real key, not '#8'
        *(("process_score", k) for k in ("10", "11", "30", "31", "50")),
        *(("process_score", str(100 + n)) for n in range(1, 6)),
    }
    assert "invalid UTF-8 byte 0xfc" in failed[("process_player", "7")]["error_message"]
    assert "expected 4 fields, got 3" in failed[("process_score", "50")]["error_message"]
    assert "duplicate key '20'" in run.stdout and "differs" in run.stdout

    # 2. the summary, read whole: where, what and the record
    shown = project.cli("--show")
    assert shown.returncode == 0
    out = shown.stdout
    assert "at: data/players.csv:8" in out and "at: data/scores.csv:27" in out
    assert "content that differs from the first record with this key (data/scores.csv:21)" in out
    assert "ValueError: invalid literal for int() with base 10: '19x8'" in out
    assert "no row in players where id=999" in out
    assert '"amount": "1,030.50"' in out

    # fix: the processor takes comma amounts; the source is repaired by hand
    project.write("ingest_scores.py", SCORES.replace("AMOUNT", 'record["amount"].replace(",", "")'))
    fixed = [r for r in corrupt if r[1] != 999] + [list(good_scores[49])]
    fixed[9][2], fixed[10][2] = good_scores[9][2], good_scores[10][2]
    del fixed[25]  # the changed duplicate
    project.write("data/scores.csv", scores_csv(fixed))
    project.write("data/players.csv", latin1)  # as UTF-8

    # 3. a clean run: the gone rows are retired, the changes are shown
    clean = project.cli()
    assert clean.returncode == 0, clean.stdout
    assert "5 earlier failures are gone from the source, retired" in clean.stdout
    assert "process_player: 1 changed record" in clean.stdout
    assert '[7] name: "Muller" → "Müller"' in clean.stdout
    assert "process_score: 2 changed records" in clean.stdout
    assert '[30] amount: "1030.50" → "1,030.50"' in clean.stdout

    # 4. --lf is clean
    lf = project.cli("--lf")
    assert lf.returncode == 0 and "nothing to rerun" in lf.stdout

    assert project.query("SELECT name FROM players WHERE id = 7") == [{"name": "Müller"}]
    assert project.scalar("SELECT amount::text FROM scores WHERE id = 30") == "1030.50"
    assert project.scalar("SELECT count(*) FROM scores") == 50
    assert project.scalar("SELECT year FROM scores WHERE id = 10") == good_scores[9][2]
    assert (
        project.scalar(
            "SELECT count(*) FROM ingestkit.latest"
            " WHERE status IN ('failed', 'error') AND retired_batch IS NULL"
        )
        == 0
    )


def test_lf_on_node_ids_with_nothing_to_rerun_says_so_and_exits_0(project):
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 10), (2, "x")])
    project.run()
    ok_key = project.run("--lf", f"{NODE}[1]")
    assert ok_key.exit_code == 0
    assert "nothing to rerun" in ok_key.output
    assert project.scalar("SELECT count(*) FROM ingestkit.batches") == 1  # no batch ran
    assert "nothing to rerun" in project.run("--lf", "-k", "nomatch").output
    assert [i["key"] for i in project.run("--lf", f"{NODE}[2]").items] == ["2"]


def test_an_incremental_source_retires_nothing(project):
    """A source that takes ``state`` yields what is new: old failures are not gone."""
    project.write("data.json", json.dumps([{"id": i} for i in range(1, 6)]))
    project.write(
        "ingest_inc.py",
        """
        import json, pathlib
        import ingestkit

        def new_rows(state):
            since = state.get("last_id", 0)
            rows = json.loads((pathlib.Path(__file__).parent / "data.json").read_text())
            return [r for r in rows if r["id"] > since]

        @ingestkit.source(new_rows, key="id")
        def process_inc(record, state):
            state["last_id"] = max(state.get("last_id", 0), record["id"])
            if record["id"] == 3:
                raise ValueError("three")
        """,
    )
    assert project.run().statuses()["3"] == "failed"
    project.write("data.json", json.dumps([{"id": i} for i in range(1, 8)]))
    assert project.run().statuses() == {"6": "succeeded", "7": "succeeded"}
    assert latest(project)["3"] == ("failed", False)


def test_latest_keeps_the_succeeded_records_under_workers_too(project):
    """store_payloads = latest is the default with -n as without (the leader once
    handed its workers the old default, "failed", and no record was kept)."""
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(k, k * 10) for k in range(1, 41)])
    result = project.run("-n", "2")
    assert result.exit_code == 0, result.output
    kept = project.scalar("SELECT count(*) FROM ingestkit.latest WHERE record IS NOT NULL")
    assert kept == 40
    write_rows(project, [(k, k * 10 + (k == 7)) for k in range(1, 41)])
    again = project.run("-n", "2")
    assert again.exit_code == 0, again.output
    assert "1 changed record" in again.output, again.output


def test_records_kept_as_jsonb_before_migration_0009_still_show_what_changed(project):
    """Migration 0009 turns ingestkit.latest.record from jsonb into json: a database
    of version 8 keeps its records, and the next change is still diffed against them."""
    project.write("ingest_rows.py", ROWS)
    write_rows(project, [(1, 99), (2, 20)])
    project.run()
    # the database as version 8 left it: records as jsonb (and no later migration's table)
    project.query(
        "ALTER TABLE ingestkit.latest ALTER COLUMN record TYPE jsonb USING record::jsonb;"
        " DROP TABLE ingestkit.batch_keys;"
        " UPDATE ingestkit.schema_version SET version = 8 WHERE version > 8"
    )
    write_rows(project, [(1, 100), (2, 20)])
    second = project.run()
    assert second.counts == {"succeeded": 1, "unchanged": 1}
    assert '[1] w: "99" → "100"' in second.output
    assert project.scalar(
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_schema = 'ingestkit' AND table_name = 'latest' AND column_name = 'record'"
    ) == "json"
    kept = project.query("SELECT key, record FROM ingestkit.latest ORDER BY key")
    assert [r["record"] for r in kept] == [{"id": "1", "w": "100"}, {"id": "2", "w": "20"}]
