"""§7: db.insert/db.upsert take objects and lists; typed columns; buffered upserts."""

import importlib.util

import pytest

SCHEMA = """
import dataclasses
import decimal
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute(
        "CREATE TABLE IF NOT EXISTS players (playerid text PRIMARY KEY, birthyear int, "
        "weight numeric, debut date, name text NOT NULL, note text)"
    )
"""


def rows_csv(project, rows, name="people.csv"):
    header = "playerID,birthYear,weight,debut,name,note\n"
    project.write(f"data/{name}", header + "".join(",".join(r) + "\n" for r in rows))


def test_upsert_takes_dataclass_instances_lists_and_matches_columns_case_insensitively(project):
    rows_csv(
        project, [("p1", "1950", "80.5", "1970-04-01", "Ann", ""), ("p2", "", "", "", "Bob", "x")]
    )
    project.write(
        "ingest_players.py",
        SCHEMA
        + """
@dataclasses.dataclass
class Player:
    playerID: str
    birthYear: int | None
    weight: decimal.Decimal | None
    name: str
    note: str | None = None

@ingestkit.source(ingestkit.read_csv("data/people.csv"), key="playerID")
def process_player(record: Player, db):
    db.upsert("players", record, conflict=("playerid",))
    db.upsert("players", [record, dataclasses.replace(record, note="again")],
              conflict="playerid")
""",
    )
    result = project.run()
    assert result.exit_code == 0, result.output
    rows = project.query(
        "SELECT playerid, birthyear, weight::text, name, note FROM players ORDER BY 1"
    )
    assert rows == [
        {"playerid": "p1", "birthyear": 1950, "weight": "80.5", "name": "Ann", "note": "again"},
        {"playerid": "p2", "birthyear": None, "weight": None, "name": "Bob", "note": "again"},
    ]


def test_empty_string_into_a_typed_column_is_null_and_other_strings_are_parsed(project):
    rows_csv(
        project, [("p1", "1950", "80.5", "1970-04-01", "Ann", ""), ("p2", "", "", "", "Bob", "")]
    )
    project.write(
        "ingest_players.py",
        SCHEMA
        + """
@ingestkit.source(ingestkit.read_csv("data/people.csv"), key="playerID")
def process_player(record, db):
    db.insert("players", record)  # raw CSV strings, keys in another case
""",
    )
    result = project.run()
    assert result.exit_code == 0, result.output
    rows = project.query(
        "SELECT birthyear, weight::text, debut::text, note FROM players ORDER BY 1"
    )
    # '' stays '' in a text column
    assert rows == [
        {"birthyear": 1950, "weight": "80.5", "debut": "1970-04-01", "note": ""},
        {"birthyear": None, "weight": None, "debut": None, "note": ""},
    ]


@pytest.mark.parametrize("method", ["insert", "upsert"])
def test_a_value_postgres_rejects_fails_its_item_naming_table_column_and_value(project, method):
    good = [(f"p{i}", "1950", "80", "1970-01-01", f"n{i}", "") for i in range(1, 21)]
    good[6] = ("p7", "18x0", "80", "1970-01-01", "n7", "")
    good[13] = ("p14", "1950", "80", "1970-02-30", "n14", "")
    rows_csv(project, good)
    project.write(
        "ingest_players.py",
        SCHEMA
        + f"""
@ingestkit.source(ingestkit.read_csv("data/people.csv"), key="playerID")
def process_player(record, db):
    db.{method}("players", record{', conflict=("playerid",)' if method == "upsert" else ""})
""",
    )
    result = project.run("--chunk-size", "10")
    assert result.exit_code == 1
    assert result.counts == {"succeeded": 18, "failed": 2}
    items = result.by_key()
    assert items["p7"]["error_type"] == "InvalidTextRepresentation"
    assert items["p7"]["error_message"] == (
        "table players, column birthyear: value '18x0' rejected: "
        'invalid input syntax for type integer: "18x0"'
    )
    assert (
        "table players, column debut: value '1970-02-30' rejected"
        in (items["p14"]["error_message"])
    )
    # rows in the target = succeeded items
    assert project.scalar("SELECT count(*) FROM players") == 18


def test_upsert_failing_row_fails_only_its_item_and_later_rows_of_a_key_win(project):
    project.write(
        "ingest_u.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE IF NOT EXISTS u (id int PRIMARY KEY, v text NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS n (id int PRIMARY KEY, v text)")

        RECORDS = [{"n": i, "id": i % 7, "v": None if i == 12 else f"v{i}"} for i in range(1, 31)]

        @ingestkit.source(RECORDS, key="n")
        def process_u(record, db):
            db.upsert("u", {"id": record["id"], "v": record["v"]})
            db.upsert("n", {"id": record["id"], "v": record["v"]}, conflict=("id",))
        """,
    )
    result = project.run("--chunk-size", "30")
    assert result.counts == {"succeeded": 29, "failed": 1}
    assert result.by_key()["12"]["error_type"] == "NotNullViolation"
    # as 30 statements in order: per id the last record's value (12 failed: 5 wins for id 5)
    rows = {r["id"]: r["v"] for r in project.query("SELECT id, v FROM u")}
    expected = {}
    for i in range(1, 31):
        if i != 12:
            expected[i % 7] = f"v{i}"
    assert rows == expected
    assert project.scalar("SELECT count(*) FROM n") == 7  # item 12's other row went with it


def test_upsert_with_only_conflict_columns_keeps_the_first_and_items_read_their_rows(project):
    project.write(
        "ingest_k.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE IF NOT EXISTS k (id int PRIMARY KEY, v text)")

        @ingestkit.source([{"id": i % 3, "v": str(i)} for i in range(9)], key="v")
        def process_k(record, db):
            db.upsert("k", {"id": record["id"]})
            db.upsert("k", {"id": record["id"], "v": record["v"]})
            row = db.query_one("SELECT v FROM k WHERE id = %s", (record["id"],))
            assert row["v"] == record["v"]
        """,
    )
    result = project.run()
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r["v"] for r in project.query("SELECT id, v FROM k")}
    assert rows == {0: "6", 1: "7", 2: "8"}


def test_changed_column_sets_keep_statement_order(project):
    project.write(
        "ingest_o.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE IF NOT EXISTS o (id int PRIMARY KEY, v int, w int)")

        @ingestkit.source([1, 2, 3], key=str)
        def process_o(record, db):
            if record == 2:
                db.upsert("o", {"id": 1, "v": 2, "w": 2})
            else:
                db.upsert("o", {"id": 1, "v": record})
        """,
    )
    assert project.run().exit_code == 0
    assert project.query("SELECT v, w FROM o") == [{"v": 3, "w": 2}]


@pytest.mark.skipif(importlib.util.find_spec("pydantic") is None, reason="needs pydantic")
def test_insert_takes_pydantic_instances_by_field_name(project):
    project.write(
        "ingest_p.py",
        """
        from pydantic import BaseModel, Field
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE IF NOT EXISTS p (id int PRIMARY KEY, name text)")

        class P(BaseModel):
            id: int = Field(alias="ID")
            name: str = Field(alias="Full_Name")

        @ingestkit.source([{"ID": "1", "Full_Name": "Ann"}], key="ID")
        def process_p(record: P, db):
            db.insert("p", record)
        """,
    )
    assert project.run().exit_code == 0
    assert project.query("SELECT id, name FROM p") == [{"id": 1, "name": "Ann"}]


def test_a_table_created_later_in_the_batch_gets_typed_columns(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.source([{"id": "1", "n": ""}], key="id")
        def process_early(record, db):
            db.insert("late", record)  # no such table yet: fails
        """,
    )
    project.write(
        "ingest_b.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="module", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE late (id int PRIMARY KEY, n int)")

        @ingestkit.source([{"ID": "2", "n": ""}], key="ID")
        def process_late(record, db):
            db.upsert("late", record)
        """,
    )
    result = project.run()
    assert result.by_key()["1"]["error_type"] == "UndefinedTable"
    assert result.by_key()["2"]["status"] == "succeeded"
    assert project.query("SELECT id, n FROM late") == [{"id": 2, "n": None}]
