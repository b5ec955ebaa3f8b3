"""§7: typed records (dataclass and pydantic models on ``record``) and the header check."""

import importlib.util
import sys

import pytest

TYPES = """
import datetime
import decimal
import enum
import uuid
from dataclasses import dataclass, field

import ingestkit


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Size(enum.Enum):
    S = 1
    L = 2


@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS seen (id int PRIMARY KEY, shown text)")


@dataclass
class Row:
    id: int
    ratio: float
    price: decimal.Decimal
    ok: bool
    day: datetime.date
    at: datetime.datetime
    clock: datetime.time
    ref: uuid.UUID
    color: Color
    size: Size
    name: str
    note: str | None = None
    count: int | None = None
    doubles: int | None = field(default=None, metadata={"column": "2B"})
"""

SHOW = """
    shown = "|".join(f"{k}={type(v).__name__}:{v}" for k, v in vars(record).items())
    db.insert("seen", {"id": record.id, "shown": shown})
"""

HEADER = "id,ratio,price,ok,day,at,clock,ref,color,size,name,note,count,2B,extra\n"
GOOD = (
    "1,2.5,10.10,Yes,2024-02-29,2024-02-29T10:11:12+01:00,10:11,"
    "12345678-1234-5678-1234-567812345678,red,2,Ann,,,7,ignored\n"
)


def shown(project, id_):
    return project.scalar("SELECT shown FROM seen WHERE id = %s", (id_,))


def test_dataclass_record_converts_every_listed_type(project):
    project.write("data/rows.csv", HEADER + GOOD + GOOD.replace("1,", "2,", 1).replace("Yes", "f"))
    project.write(
        "ingest_rows.py",
        TYPES
        + """
@ingestkit.source(ingestkit.read_csv("data/rows.csv"), key="id")
def process_row(record: Row, db):"""
        + SHOW,
    )
    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 2}
    assert set(result.by_key()) == {"1", "2"}  # the key comes from the raw record
    text = shown(project, 1)
    for part in (
        "id=int:1",
        "ratio=float:2.5",
        "price=Decimal:10.10",
        "ok=bool:True",
        "day=date:2024-02-29",
        "at=datetime:2024-02-29 10:11:12+01:00",
        "clock=time:10:11:00",
        "ref=UUID:12345678-1234-5678-1234-567812345678",
        "color=Color:Color.RED",
        "size=Size:Size.L",
        "name=str:Ann",
        "note=NoneType:None",
        "count=NoneType:None",
        "doubles=int:7",
    ):
        assert part in text.split("|"), (part, text)
    assert "ok=bool:False" in shown(project, 2)


def test_bool_words_in_any_case(project):
    words = ["true", "FALSE", "t", "F", "Yes", "no", "Y", "n", "1", "0"]
    rows = "".join(f"{i},{w}\n" for i, w in enumerate(words, 1))
    project.write("data/b.csv", "id,flag\n" + rows)
    project.write(
        "ingest_b.py",
        """
        from dataclasses import dataclass
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE b (id int PRIMARY KEY, flag bool)")

        @dataclass
        class B:
            id: int
            flag: bool

        @ingestkit.source(ingestkit.read_csv("data/b.csv"), key="id")
        def process_b(record: B, db):
            db.insert("b", {"id": record.id, "flag": record.flag})
        """,
    )
    assert project.run().exit_code == 0
    flags = [r["flag"] for r in project.query("SELECT flag FROM b ORDER BY id")]
    assert flags == [True, False, True, False, True, False, True, False, True, False]


def test_record_invalid_lists_every_bad_field_after_the_location(project):
    header = "playerID,birthYear,weight,bats,debut\n"
    rows = [
        "aaron01,1934,180,R,1954-04-13\n",
        "bad01,19x5,heavy,R,1954-13-01\n",  # line 3: three bad fields
        "ok02,1950,,L,\n",  # empty optional values are None
        "miss01,,170,R,1960-01-01\n",  # line 5: a required field empty
        "ok03,1951,200,B,1970-01-01\n",
    ]
    project.write("data/People.csv", header + "".join(rows))
    project.write(
        "ingest_people.py",
        """
        import datetime
        from dataclasses import dataclass
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE people (id text PRIMARY KEY, born int, weight int)")

        @dataclass
        class Person:
            playerID: str
            birthYear: int
            bats: str
            weight: int | None = None
            debut: datetime.date | None = None

        @ingestkit.source(ingestkit.read_csv("data/People.csv"), key="playerID")
        def process_person(record: Person, db):
            db.insert("people", {"id": record.playerID, "born": record.birthYear,
                                 "weight": record.weight})
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert result.counts == {"succeeded": 3, "error": 2}
    items = result.by_key()
    bad = items["bad01"]
    assert bad["status"] == "error"
    assert bad["error_type"] == "RecordInvalid"
    assert bad["error_message"] == (
        "data/People.csv, line 3: birthYear: '19x5' is not an integer; "
        "weight: 'heavy' is not an integer; debut: '1954-13-01' is not an ISO 8601 date"
    )
    assert bad["payload"]["birthYear"] == "19x5"  # the raw record is kept for --lf
    # the processor never ran: no frame of ingestkit's converter is shown as the user's
    assert "Traceback" not in (bad["traceback"] or ""), bad["traceback"]
    assert "<string>" not in result.output
    assert items["miss01"]["error_message"] == "data/People.csv, line 5: birthYear: '' is empty"
    # end to end: records = items; rows in the target = succeeded items
    assert len(result.items) == len(rows)
    assert project.scalar("SELECT count(*) FROM people") == 3
    assert project.scalar("SELECT weight FROM people WHERE id = 'ok02'") is None


def test_json_values_of_the_right_type_pass_through(project):
    project.write(
        "data/x.jsonl",
        '{"id": 1, "price": "1.50", "ok": true, "n": 3}\n'
        '{"id": "2", "price": 2, "ok": "no", "n": null}\n'
        '{"id": 3.5, "price": 1, "ok": 1}\n',
    )
    project.write(
        "ingest_x.py",
        """
        import decimal
        from dataclasses import dataclass
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE x (id int PRIMARY KEY, price numeric, ok bool, n int)")

        @dataclass
        class X:
            id: int
            price: decimal.Decimal
            ok: bool
            n: int | None

        @ingestkit.source(ingestkit.read_jsonl("data/x.jsonl"), key="id")
        def process_x(record: X, db):
            assert isinstance(record.price, decimal.Decimal)
            db.insert("x", {"id": record.id, "price": record.price, "ok": record.ok,
                            "n": record.n})
        """,
    )
    result = project.run()
    assert result.counts == {"succeeded": 2, "error": 1}
    assert result.by_key()["3.5"]["error_message"] == (
        "data/x.jsonl, line 3: id: 3.5 is not an integer"
    )
    rows = project.query("SELECT id, price::text AS price, ok, n FROM x ORDER BY id")
    assert rows == [
        {"id": 1, "price": "1.50", "ok": True, "n": 3},
        {"id": 2, "price": "2", "ok": False, "n": None},
    ]


def test_missing_required_columns_make_the_file_one_error_item(project):
    # a renamed column: without the check every row would fail on its own
    project.write("data/s.csv", "yearID,team,playerID,salary\n" + "2001,BOS,p1,100\n" * 50)
    project.write(
        "ingest_s.py",
        """
        import decimal
        from dataclasses import dataclass
        import ingestkit

        @dataclass
        class Salary:
            yearID: int
            teamID: str
            playerID: str
            salary: decimal.Decimal
            note: str | None = None
            bonus: int = 0

        @ingestkit.source(ingestkit.read_csv("data/s.csv"), key=("yearID", "playerID"))
        def process_salary(record: Salary, db):
            raise AssertionError("no record of the file runs")
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert result.counts == {"error": 1}
    (item,) = result.items
    assert item["key"] == ""
    assert item["status"] == "error"
    message = item["error_message"]
    assert "data/s.csv" in message
    assert "missing column teamID" in message
    assert "yearID, team, playerID, salary" in message
    assert "note" not in message.split("the header has")[0]  # optional: not required


def test_model_error_on_a_source_less_processor_is_not_a_typed_record(project):
    project.write(
        "ingest_one.py",
        """
        from dataclasses import dataclass
        import ingestkit

        @dataclass
        class Nothing:
            id: int

        def process_once(db):
            db.execute("SELECT 1")
        """,
    )
    assert project.run().exit_code == 0


HAVE_PYDANTIC = importlib.util.find_spec("pydantic") is not None


@pytest.mark.skipif(not HAVE_PYDANTIC, reason="pydantic is not installed")
def test_pydantic_model_validates_with_aliases(project):
    project.write("data/p.csv", "ID,Full Name,age\n1,Ann,30\n2,Bob,x3\n3,Cy,\n")
    project.write(
        "ingest_p.py",
        """
        from pydantic import BaseModel, Field
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE p (id int PRIMARY KEY, name text, age int)")

        class P(BaseModel):
            id: int = Field(alias="ID")
            name: str = Field(alias="Full Name")
            age: int | None = None

        @ingestkit.source(ingestkit.read_csv("data/p.csv"), key="ID")
        def process_p(record: P, db):
            db.insert("p", {"id": record.id, "name": record.name, "age": record.age})
        """,
    )
    result = project.run()
    items = result.by_key()
    assert items["1"]["status"] == "succeeded"
    assert items["2"]["error_type"] == "RecordInvalid"
    assert items["2"]["error_message"].startswith("data/p.csv, line 3: age: 'x3' ")
    assert "integer" in items["2"]["error_message"]
    assert items["3"]["error_type"] == "RecordInvalid"  # pydantic's own rules: '' is no int
    assert project.scalar("SELECT name FROM p WHERE id = 1") == "Ann"


@pytest.mark.skipif(not HAVE_PYDANTIC, reason="pydantic is not installed")
def test_pydantic_header_check_uses_aliases(project):
    project.write("data/p.csv", "id,name\n1,Ann\n")
    project.write(
        "ingest_p.py",
        """
        from pydantic import BaseModel, Field
        import ingestkit

        class P(BaseModel):
            id: int = Field(alias="ID")
            name: str

        @ingestkit.source(ingestkit.read_csv("data/p.csv"), key="id")
        def process_p(record: P):
            pass
        """,
    )
    result = project.run()
    assert result.counts == {"error": 1}
    assert "missing column ID " in result.items[0]["error_message"]


BLOCK_PYDANTIC = (
    "import sys; sys.modules['pydantic'] = None; import ingestkit; "
    "sys.exit(ingestkit.main(sys.argv[1:]))"
)


def test_pydantic_model_without_pydantic_names_the_pip_install(project):
    import subprocess

    project.write("data/p.csv", "id\n1\n")
    project.write(
        "ingest_p.py",
        """
        from pydantic import BaseModel
        import ingestkit

        class P(BaseModel):
            id: int

        @ingestkit.source(ingestkit.read_csv("data/p.csv"), key="id")
        def process_p(record: P):
            pass
        """,
    )
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_PYDANTIC, "--dsn", project.dsn],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    hint = "pip install 'ingestkit[pydantic]'"
    lines = [line for line in proc.stdout.splitlines() if hint in line]
    assert lines and lines[0].startswith("ingest_p.py:1: ModuleNotFoundError"), proc.stdout


def test_odd_values_and_model_checks_are_record_invalid_not_crashes(project):
    project.write(
        "ingest_odd.py",
        """
        from dataclasses import dataclass
        import ingestkit

        @dataclass
        class Odd:
            id: str
            n: int
            tag: str = "none"

            def __post_init__(self):
                if self.n < 0:
                    raise ValueError("n must not be negative")

        RECORDS = [{"id": "a", "n": "\\u00b2"}, {"id": "b", "n": "-3"}, {"id": "c", "n": " 7 "},
                   ["not", "a", "dict"], {"id": "d", "n": "9" * 5000}]

        @ingestkit.source(RECORDS, key=lambda r: r["id"] if isinstance(r, dict) else "list")
        def process_odd(record: Odd):
            assert record.n == 7 and record.tag == "none"
        """,
    )
    result = project.run()
    items = result.by_key()
    assert items["c"]["status"] == "succeeded"
    assert items["a"]["error_message"] == "record 1: n: '²' is not an integer"
    assert items["b"]["error_message"] == "record 2: ValueError: n must not be negative"
    assert items["list"]["error_type"] == "RecordInvalid"
    assert "got list" in items["list"]["error_message"]
    assert items["d"]["error_message"].startswith("record 5: n: '99999")
    assert "is invalid (Exceeds the limit" in items["d"]["error_message"]


def test_typed_items_run_again_in_a_replayed_chunk(project):
    project.write(
        "ingest_r.py",
        """
        from dataclasses import dataclass
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE IF NOT EXISTS r (id int PRIMARY KEY, v text NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS side (id int PRIMARY KEY)")

        @dataclass
        class R:
            id: int
            v: str

        @ingestkit.source([{"id": str(i), "v": "" if i == 4 else "x"} for i in range(1, 11)],
                          key="id")
        def process_r(record: R, db):
            db.execute("INSERT INTO side VALUES (%s)", (record.id,))
            db.insert("r", {"id": record.id, "v": None if record.v == "" else record.v})
        """,
    )
    result = project.run("--chunk-size", "10")
    assert result.counts == {"succeeded": 9, "failed": 1}
    assert result.by_key()["4"]["error_type"] == "NotNullViolation"
    assert project.scalar("SELECT count(*) FROM r") == 9
    assert project.scalar("SELECT count(*) FROM side") == 9
