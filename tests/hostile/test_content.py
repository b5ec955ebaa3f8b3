"""Hostile content: what stray quotes, odd characters and deep nesting do to records.

Issue 11, the content defects: every physical line of a CSV file becomes an item or
is counted in an error item naming the lines it covers (#3); a key or a payload
holding what PostgreSQL text cannot (NUL, lone surrogates) is stored in a lossless
form, never blocks its processor, and ``--lf`` gives back exactly the record that
was read, or says it cannot (#4, #5); deep nesting fails one item (#8); large CSV
fields, empty keys, control characters in output, formulas in CSV exports (#12).
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

CSV_PIPELINE = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id text PRIMARY KEY, name text NOT NULL)")

@ingestkit.source(ingestkit.read_csv("data/x.csv"READ_OPTIONS), key="id")
def process_row(record, db):
    db.insert("t", {"id": record["id"], "name": record["name"]})
"""


def csv_pipeline(options: str = "") -> str:
    return CSV_PIPELINE.replace("READ_OPTIONS", options)


def target(project) -> dict[str, str]:
    return {r["id"]: r["name"] for r in project.query("SELECT id, name FROM t")}


def errors(result) -> list[dict]:
    return [i for i in result.items if i["status"] in ("failed", "error")]


def assert_clean(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert "INTERNAL ERROR" not in result.output, result.output


# -- #3: a stray quote must not swallow the rows after it ----------------------


def test_stray_quote_does_not_swallow_the_following_rows(project):
    rows = [f"{n},item {n}" for n in range(3, 10_003)]
    data = "id,name\n1,a\n" + '2,"27" monitor"\n' + "\n".join(rows) + "\n"
    project.write("ingest_x.py", csv_pipeline())
    project.write("data/x.csv", data.encode())
    result = project.run()
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 10_001, "error": 1}, result.output
    (bad,) = errors(result)
    assert re.search(r"data/x\.csv, line 3\b", bad["error_message"]), bad["error_message"]
    found = target(project)
    assert len(found) == 10_001 and found["10002"] == "item 10002" and "2" not in found
    assert_clean(result)


def test_unterminated_quote_keeps_the_lines_after_it(project):
    # By CSV rules the quote opened on line 3 runs to the end of the file; that
    # record does not parse, so only its first line is the error and reading
    # goes on at line 4.
    project.write("ingest_x.py", csv_pipeline())
    project.write("data/x.csv", b'id,name\n1,a\n2,"b\n3,c\n4,d\n')
    result = project.run()
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 3, "error": 1}, result.output
    (bad,) = errors(result)
    assert re.search(r"data/x\.csv, line 3\b", bad["error_message"]), bad["error_message"]
    assert "quot" in bad["error_message"]
    assert target(project) == {"1": "a", "3": "c", "4": "d"}


#: A csv-spectrum-like corpus: each file's bytes, written under data/corpus/.
CORPUS: dict[str, bytes] = {
    "simple.csv": b"id,name\n1,a\n2,b\n",
    "crlf.csv": b"id,name\r\n1,a\r\n2,b\r\n",
    "quotes_and_commas.csv": b'id,name\n1,"a, b"\n2,"say ""hi"""\n',
    "embedded_newlines.csv": b'id,name\n1,"two\nlines"\n2,"three\r\nlines\nhere"\n3,c\n',
    "empty_lines.csv": b"id,name\n\n1,a\n\n\n2,b\n\n",
    "bom.csv": b"\xef\xbb\xbfid,name\n1,a\n",
    "trailing_delimiter.csv": b"id,name\n1,a,\n2,b\n3,c,\n",
    "ragged.csv": b"id,name\n1\n2,b,c,d\n3,c\n4\n",
    "nul.csv": b"id,name\n1,a\x00b\n2,b\n",
    "latin1.csv": b"id,name\n1,caf\xe9\n2,b\n3,na\xefve\n",
    "truncated_last_line.csv": b"id,name\n1,a\n2,b",
    "truncated_in_quotes.csv": b'id,name\n1,a\n2,"never closed',
    "stray_quote.csv": b'id,name\n1,a\n2,"27" monitor"\n3,c\n4,"d"\n5,e\n',
    "quote_in_unquoted_field.csv": b'id,name\n1,a"b\n2,c""d\n3,e\n',
    "unterminated_mid_file.csv": b'id,name\n1,"a\n2,b\n3,c\n4,d\n',
    "two_stray_quotes.csv": b'id,name\n1,"a\n2,b\n3,c"x\n4,d\n5,"e\n6,f\n',
    "bad_multiline_record.csv": b'id,name,extra\n1,"x\ny",z,w\n2,b,c\n',
    "nul_in_multiline.csv": b'id,name\n1,"a\n\x00b"\n2,b\n',
    "only_quote.csv": b'id,name\n"\n1,a\n',
    "bad_header.csv": b'id,"name\n1,a\n2,b\n',
    "undecodable_header.csv": b"id,n\xe9me\n1,a\n",
    "whitespace_line.csv": b"id,name\n1,a\n \n2,b\n",
    "cr_only.csv": b"id,name\r1,a\r2,b\r",
}

_LINES = re.compile(r"\blines? (\d+)(?:[-\u2013](\d+))?")


def covered_lines(message: str) -> set[int]:
    """The line numbers an error message names ("line 3", "lines 3-5")."""
    out: set[int] = set()
    for first, last in _LINES.findall(message):
        out.update(range(int(first), int(last or first) + 1))
    return out


def physical_lines(data: bytes) -> list[bytes]:
    lines = re.split(rb"\r\n|\r|\n", data)
    return lines[:-1] if lines[-1] == b"" else lines


CORPUS_PIPELINE = """
import json
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS got (file text, rec text)")

"""


def test_hostile_csv_corpus_accounts_for_every_line(project):
    """items + lines covered by errors = lines in the file, for every corpus file."""
    processors = "".join(
        f"@ingestkit.source(ingestkit.read_csv('data/corpus/{name}'), key=None)\n"
        f"def process_{name[:-4]}(record, db, item):\n"
        "    where = item.location.rsplit(':', 1)[0]\n"
        "    db.insert('got', {'file': where, 'rec': json.dumps(record)})\n\n"
        for name in CORPUS
    )
    project.write("ingest_corpus.py", CORPUS_PIPELINE + processors)
    for name, data in CORPUS.items():
        project.write(f"data/corpus/{name}", data)
    result = project.run()
    assert result.exit_code in (0, 1), result.output
    assert_clean(result)
    got: dict[str, list[dict]] = {}
    for row in project.query("SELECT file, rec FROM got"):
        got.setdefault(row["file"].rsplit("/", 1)[-1], []).append(json.loads(row["rec"]))
    covered: dict[str, set[int]] = {}
    for item in errors(result):
        name = re.search(r"corpus/([\w.]+)", item["error_message"]).group(1)
        lines = covered_lines(item["error_message"])
        assert lines, item["error_message"]
        assert not lines & covered.get(name, set()), (name, item["error_message"])
        covered.setdefault(name, set()).update(lines)
    for name, data in CORPUS.items():
        lines = physical_lines(data)
        errs = covered.get(name, set())
        blank = sum(1 for n, line in enumerate(lines, 1) if not line and n not in errs)
        in_records = sum(
            1 + sum(len(re.findall(r"\r\n|\r|\n", v)) for v in rec.values())
            for rec in got.get(name, [])
        )
        header = 0 if 1 in covered.get(name, ()) else 1
        assert in_records + len(covered.get(name, ())) + blank + header == len(lines), (
            name,
            got.get(name),
            sorted(covered.get(name, ())),
        )


# -- #12: large CSV fields -----------------------------------------------------


def test_csv_field_over_128_kib_is_read_by_default(project):
    big = "x" * 1_000_000
    project.write("ingest_x.py", csv_pipeline())
    project.write("data/x.csv", f'id,name\n1,{big}\n2,"{big}\n{big}"\n3,c\n'.encode())
    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 3}
    assert target(project) == {"1": big, "2": f"{big}\n{big}", "3": "c"}


def test_csv_field_over_the_limit_says_how_to_allow_it(project):
    project.write("ingest_x.py", csv_pipeline(", field_size_limit=1000"))
    project.write("data/x.csv", b"id,name\n1,a\n2," + b"x" * 5000 + b"\n3,c\n")
    result = project.run()
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 2, "error": 1}
    (bad,) = errors(result)
    assert "data/x.csv, line 3" in bad["error_message"]
    assert "field_size_limit=" in bad["error_message"], bad["error_message"]
    assert target(project) == {"1": "a", "3": "c"}


# -- #4, #5: keys and payloads PostgreSQL text cannot hold ---------------------

JSONL_PIPELINE = """
import os
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (k text, rec text)")

@ingestkit.source(ingestkit.read_jsonl("data/x.jsonl"), key="id")
def process_row(record, db, item):
    if os.environ.get("IK_FAIL") and record.get("fail"):
        raise ValueError("told to fail")
    db.insert("t", {"k": item.key, "rec": ascii(sorted(record.items()))})
"""

SECOND = """
import ingestkit

def process_after(db):
    db.execute("CREATE TABLE IF NOT EXISTS after_ran (n int)")
    db.execute("INSERT INTO after_ran VALUES (1)")
"""


def test_lone_surrogate_key_never_blocks_its_processor(project):
    project.write("ingest_x.py", JSONL_PIPELINE)
    project.write("ingest_y.py", SECOND)
    project.write(
        "data/x.jsonl",
        b'{"id": "1", "v": "a"}\n{"id": "\\ud800", "v": "b"}\n{"id": "3", "v": "c"}\n',
    )
    first = project.run()
    assert first.exit_code == 0, first.output
    assert first.counts == {"succeeded": 4}, first.output
    keys = {i["key"] for i in first.items if i["processor"] == "ingest_x.py::process_row"}
    assert keys == {"1", "\\\\ud800", "3"}
    assert project.scalar("SELECT count(*) FROM after_ran") == 1
    again = project.run()
    assert again.exit_code == 0, again.output
    assert again.counts == {"unchanged": 3, "succeeded": 1}, again.output
    assert project.scalar("SELECT count(*) FROM t") == 3
    assert_clean(again)


def test_nul_and_surrogates_survive_lf_exactly(project, monkeypatch):
    project.write("ingest_x.py", JSONL_PIPELINE)
    records = [
        {"id": "nul\u0000key", "v": "a\u0000b", "fail": True},
        {"id": "s1", "v": "lone \ud800 high", "\udc80key": 1, "fail": True},
        {"id": "s2", "v": ["\ufffd", "?", "\\x00", "\\"], "fail": True},
        {"id": "ok", "v": "fine"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in records)
    project.write("data/x.jsonl", text.encode())
    monkeypatch.setenv("IK_FAIL", "1")
    first = project.run()
    assert first.exit_code == 1, first.output
    assert first.counts == {"succeeded": 1, "failed": 3}, first.output
    monkeypatch.delenv("IK_FAIL")
    project.write("data/x.jsonl", b"")  # --lf feeds the stored copies, not the file
    rerun = project.run("--lf")
    assert rerun.exit_code == 0, rerun.output
    assert rerun.counts == {"succeeded": 3}, rerun.output
    stored = {r["k"]: r["rec"] for r in project.query("SELECT k, rec FROM t")}
    assert sorted(stored.values()) == sorted(ascii(sorted(r.items())) for r in records)
    assert "?" not in "".join(stored)  # no key turned into '?'
    # keys are stored in one lossless text form, the same for every use
    assert set(stored) == {"\\nul\\x00key", "s1", "s2", "ok"}


ITERABLE = """
import datetime, decimal, uuid
import ingestkit

class Opaque:
    def __str__(self):
        return "opaque"

RECORDS = [
    {"id": "typed", "d": datetime.date(2024, 5, 6), "n": decimal.Decimal("1.10"),
     "u": uuid.UUID(int=5), "b": b"\\xffok", "t": (1, "x"), "s": {3},
     "m": {7: "int key", "$ingestkit": "mine"}, "f": float("nan"), "big": 1e300},
    {"id": "opaque", "o": Opaque()},
]

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (k text, rec text)")

@ingestkit.source(RECORDS, key=lambda r: r["id"])
def process_row(record, db, item, config):
    if not record.get("ok") and not item.attempt > 1:
        raise ValueError("first try fails")
    db.insert("t", {"k": item.key, "rec": repr(sorted(record.items(), key=repr))})
"""


def test_values_json_cannot_hold_come_back_exactly_or_not_at_all(project):
    project.write("ingest_x.py", ITERABLE)
    first = project.run()
    assert first.exit_code == 1, first.output
    assert first.counts == {"failed": 2}, first.output
    payload = first.by_key()["typed"]["payload"]
    assert payload["id"] == "typed"  # plain values stay plain in the payload
    rerun = project.run("--lf")
    assert rerun.exit_code == 1, rerun.output
    assert rerun.counts == {"succeeded": 1, "error": 1}, rerun.output
    (row,) = project.query("SELECT rec FROM t WHERE k = 'typed'")
    import datetime
    import decimal
    import uuid

    expected = {
        "id": "typed",
        "d": datetime.date(2024, 5, 6),
        "n": decimal.Decimal("1.10"),
        "u": uuid.UUID(int=5),
        "b": b"\xffok",
        "t": (1, "x"),
        "s": {3},
        "m": {7: "int key", "$ingestkit": "mine"},
        "big": 1e300,
    }
    names = {"datetime": datetime, "Decimal": decimal.Decimal, "UUID": uuid.UUID, "nan": 0.0}
    got = eval(row["rec"], names)  # noqa: S307
    got = dict(got)
    assert "'f', nan" in row["rec"]
    got.pop("f")
    assert got == expected
    opaque = rerun.by_key()["opaque"]
    assert opaque["status"] == "error"
    assert "cannot be replayed" in opaque["error_message"], opaque["error_message"]


# -- #8: deep nesting -----------------------------------------------------------


def test_deeply_nested_jsonl_line_is_one_error_naming_it(project):
    project.write("ingest_x.py", JSONL_PIPELINE)
    deep = '{"id": "2", "v": ' + "[" * 990 + "]" * 990 + "}"
    project.write("data/x.jsonl", ('{"id": "1"}\n' + deep + '\n{"id": "3"}\n').encode())
    result = project.run()
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 2, "error": 1}, result.output
    (bad,) = errors(result)
    assert re.search(r"data/x\.jsonl(:|, line )2\b", bad["error_message"]), bad["error_message"]
    assert "nest" in bad["error_message"]
    assert {r["k"] for r in project.query("SELECT k FROM t")} == {"1", "3"}
    assert_clean(result)


@pytest.mark.parametrize("args", [(), ("-n", "2")], ids=["serial", "workers"])
def test_deeply_nested_iterable_record_fails_only_its_item(project, args):
    project.write(
        "ingest_x.py",
        """
import ingestkit

def deep(n):
    value = []
    for _ in range(n):
        value = [value]
    return value

@ingestkit.source([{"id": "1"}, {"id": "2", "v": deep(5000)}, {"id": "3"}], key="id")
def process_row(record, db):
    db.execute("CREATE TABLE IF NOT EXISTS t (k text)")
    db.insert("t", {"k": record["id"]})
""",
    )
    project.write("ingest_y.py", SECOND)
    result = project.run(*args)
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 3, "error": 1}, result.output
    (bad,) = errors(result)
    assert bad["key"] == "2" and "nest" in bad["error_message"], bad
    assert project.scalar("SELECT count(*) FROM after_ran") == 1
    assert_clean(result)


# -- #12: empty keys, control characters, formula cells --------------------------


def test_key_callable_returning_an_empty_string_is_an_error(project):
    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.source([{"id": "a"}, {"id": ""}], key=lambda r: r["id"])
def process_row(record):
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 1, "error": 1}, result.output
    (bad,) = errors(result)
    assert bad["key"] == "#2" and "empty" in bad["error_message"], bad


def test_control_characters_from_data_never_reach_the_terminal(project):
    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.source([{"id": "k\\x1b[2J\\x07"}, {"id": "b\\x08\\x9b"}], key="id")
def process_row(record):
    raise ValueError("bad \\x1b]0;title\\x07 value \\r\\x08 \\ud800")
""",
    )
    for args in ((), ("-v",), ("--tb=line",)):
        result = project.cli(*args)
        assert result.returncode == 1, result.stdout
        shown = re.sub(r"[\n]", "", result.stdout)
        assert not re.search(r"[\x00-\x1f\x7f-\x9f]", shown), repr(result.stdout)
        assert "\\x1b[2J" in result.stdout, result.stdout
        assert "UnicodeEncodeError" not in result.stdout, result.stdout


def test_csv_export_escapes_formula_cells(project):
    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.source(["=1+1", "+2", "-3", "@SUM(A1)", "\\tx", "\\rx", "ok"], key=lambda r: r)
def process_row(record):
    raise ValueError(record)
""",
    )
    result = project.run()
    assert result.exit_code == 1, result.output
    exported = project.run("--export", result.batch_id).output
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert len(rows) == 7
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (column, cell)
    keys = {row["key"] for row in rows}
    assert keys == {"'=1+1", "'+2", "'-3", "'@SUM(A1)", "'\tx", "'\rx", "ok"}
