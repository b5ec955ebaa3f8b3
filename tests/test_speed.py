"""Issue 16: the fast paths keep every guarantee (exact outcome per item, rows with it)."""

import json

import psycopg2
import psycopg2.errors
import pytest

CHECKED = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, n int CHECK (n > 0), v text)")

@ingestkit.source(ingestkit.read_jsonl("data/rows.jsonl"), key="id")
def process_row(record, db):
    db.insert("t", record)
"""


def test_rejected_rows_are_pinned_in_every_chunk_as_the_shares_change(project):
    """After a chunk with rejected rows, the next chunks of that table go straight
    to the row-by-row loader; each rejected row still fails its own item, with
    the server's message, and a clean chunk is written by COPY again."""
    rows = []
    for i in range(1, 41):
        n = -i if i in (2, 3, 9, 14, 15, 16) else i  # chunks of 5: bad, bad, clean, bad...
        v = "nul\x00here" if i == 17 else "ok"  # a value not even text can hold
        rows.append({"id": i, "n": n, "v": v})
    project.write("ingest_rows.py", CHECKED)
    project.write("data/rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    result = project.run("--chunk-size", "5")
    assert result.exit_code == 1
    failed = {k: i for k, i in result.by_key().items() if i["status"] == "failed"}
    assert sorted(failed, key=int) == ["2", "3", "9", "14", "15", "16", "17"], result.output
    for key in ("2", "3", "9", "14", "15", "16"):
        assert failed[key]["error_type"] == "CheckViolation", failed[key]
        assert "t_n_check" in failed[key]["error_message"]
    assert "0x00" in failed["17"]["error_message"] or "NUL" in failed["17"]["error_message"]
    written = [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")]
    assert written == [i for i in range(1, 41) if str(i) not in failed]


LOOKUPS = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db, lookup):
    db.execute("CREATE TABLE IF NOT EXISTS dim (id serial PRIMARY KEY, code text UNIQUE)")
    db.execute("CREATE TABLE IF NOT EXISTS fact (id int PRIMARY KEY, dim_id int)")
    PRELOAD

@ingestkit.source(ingestkit.read_jsonl("data/x.jsonl"), key="id")
def process_fact(record, db, lookup):
    db.insert("dim", {"code": record["id"] + "-first"})
    assert lookup.get("dim", code=record["code"]) is None  # a miss, after a write to dim
    WRITE
    db.insert("fact", {"id": record["id"], "dim_id": lookup("dim", code=record["code"])})
"""


@pytest.mark.parametrize(
    "write",
    [
        'db.insert("dim", {"code": record["code"]})',
        'lookup.get_or_create("dim", code=record["id"] + "-other"); '
        'db.insert("dim", {"code": record["code"]})',
    ],
    ids=["insert", "get_or_create-then-insert"],
)
@pytest.mark.parametrize("preload", ["pass", 'lookup.preload("dim", "code")'])
def test_a_second_write_to_a_table_forgets_a_miss_cached_since_the_first(project, write, preload):
    project.write("ingest_x.py", LOOKUPS.replace("PRELOAD", preload).replace("WRITE", write))
    project.write("data/x.jsonl", '{"id": "1", "code": "a"}\n{"id": "2", "code": "b"}\n')
    result = project.run()
    assert result.statuses() == {"1": "succeeded", "2": "succeeded"}, result.output
    assert project.scalar("SELECT count(*) FROM fact WHERE dim_id IS NOT NULL") == 2


def test_a_lookup_sees_the_row_its_item_upserted_just_before(project):
    """db.upsert is buffered as db.insert is: a lookup of that table writes it first."""
    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS dim (id serial PRIMARY KEY, code text UNIQUE)")
    db.execute("CREATE TABLE IF NOT EXISTS fact (id int PRIMARY KEY, dim_id int)")

@ingestkit.source([{"id": 1, "code": "a"}, {"id": 2, "code": "b"}], key="id")
def process_x(record, db, lookup):
    assert lookup.get("dim", code=record["code"]) is None
    db.upsert("dim", {"code": record["code"]}, conflict=("code",))
    db.insert("fact", {"id": record["id"], "dim_id": lookup("dim", code=record["code"])})
""",
    )
    result = project.run()
    assert result.statuses() == {"1": "succeeded", "2": "succeeded"}, result.output
    assert project.scalar("SELECT count(*) FROM fact WHERE dim_id IS NOT NULL") == 2


AUTO = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute(
        "CREATE TABLE IF NOT EXISTS dim (id int PRIMARY KEY, code text UNIQUE, num int UNIQUE)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS fact (id int PRIMARY KEY, dim_id int)")
    db.execute("INSERT INTO dim SELECT n, 'c' || n, n FROM generate_series(1, 60) n"
               " WHERE NOT EXISTS (SELECT FROM dim)")

@ingestkit.source(ingestkit.read_jsonl("data/x.jsonl"), key="id")
def process_fact(record, db, lookup):
    if "add" in record:
        db.insert("dim", record["add"])
    if "num" in record:
        dim_id = lookup("dim", num=record["num"])
    else:
        dim_id = lookup("dim", code=record["code"])
    db.insert("fact", {"id": record["id"], "dim_id": dim_id})
"""


def test_many_lazy_lookups_give_the_answers_of_one_query_each(project):
    """Past a few dozen values, a small dimension with a unique text column is loaded
    whole (issue 16); every answer stays the one its own query gives: hits, misses,
    rows the batch adds, and a column whose values PostgreSQL casts (int)."""
    records = [{"id": i, "code": f"c{i}" if i % 4 else f"zz{i}"} for i in range(1, 121)]
    records.append({"id": 200, "code": "new", "add": {"id": 100, "code": "new", "num": 100}})
    records.append({"id": 201, "code": "new"})
    records += [{"id": 300 + n, "num": f"0{n}"} for n in range(1, 41)]  # '07' = 7 for an int
    project.write("ingest_x.py", AUTO)
    project.write("data/x.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    def scans() -> int:
        return project.scalar(
            "SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables"
            " WHERE relname = 'dim'"
        )

    result = project.run("--chunk-size", "50")
    items = result.by_key()
    for r in records:
        key = str(r["id"])
        code = r.get("code", "")
        expected = (
            "failed"
            if code.startswith("zz") or (r["id"] <= 120 and int(code[1:]) > 60)
            else "succeeded"
        )
        assert items[key]["status"] == expected, (r, items[key])
        if expected == "failed":
            assert items[key]["error_type"] == "LookupMissing"
    facts = {r["id"]: r["dim_id"] for r in project.query("SELECT id, dim_id FROM fact")}
    assert all(facts[i] == i for i in range(1, 61) if i % 4)
    assert facts[200] == facts[201] == 100
    assert all(facts[300 + n] == n for n in range(1, 41))
    conn = psycopg2.connect(project.dsn)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM fact; DELETE FROM dim WHERE id = 100")
    conn.close()
    before = scans()
    again = project.run("--reprocess", "--chunk-size", "50")
    assert again.counts == result.counts
    # 161 without the copy: 120 code values, 40 num values (never from a copy: an
    # int column), and the fixture's own; with it, 32 code values, the copy, "new"
    assert scans() - before < 100


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


def _with_note() -> Exception:
    exc = ValueError("with a note")
    exc.add_note("the note")
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("x"),
        ValueError(),
        KeyError("k"),
        _Unprintable("q"),
        _with_note(),
        SyntaxError("bad", ("f.py", 1, 2, "x = ")),
        psycopg2.errors.CheckViolation("new row violates\nDETAIL:  x"),
        ExceptionGroup("group", [ValueError(1)]),
    ],
    ids=repr,
)
def test_the_stored_exception_line_is_the_traceback_modules(exc):
    import traceback

    from ingestkit.outcomes import LookupMissing
    from ingestkit.runner import _exception_line

    assert _exception_line(exc) == "".join(traceback.format_exception_only(type(exc), exc))
    missing = LookupMissing("dim", {"code": "a"})
    assert _exception_line(missing) == "".join(traceback.format_exception_only(missing))
