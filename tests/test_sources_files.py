"""Folders of files, Excel, Parquet and nested JSON (SPEC §8, the file part).

Every test runs the CLI on a folder of real ``ingest_*.py`` files and real data
files (xlsx and parquet written by openpyxl and pyarrow themselves) and asserts
on the exit code, the output and the rows in ``ingestkit.items`` / ``ingestkit.files``.
"""

from __future__ import annotations

import json
import zipfile

import pytest

PIPELINE = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, name text NOT NULL)")

@ingestkit.source(READER, key="id")
def process_row(record, db, item):
    db.upsert("t", {"id": int(record["id"]), "name": str(record["name"])}, conflict=("id",))
"""


def pipeline(reader: str) -> str:
    return PIPELINE.replace("READER", reader)


def csv_file(*rows: tuple) -> str:
    return "id,name\n" + "".join(f"{i},{n}\n" for i, n in rows)


def items(project, status: str | None = None) -> list[dict]:
    rows = project.query(
        "SELECT key, status, error_type, error_message FROM ingestkit.items "
        "WHERE batch_id = (SELECT id FROM ingestkit.batches ORDER BY started_at DESC LIMIT 1) "
        "ORDER BY finished_at, key"
    )
    return [r for r in rows if status is None or r["status"] == status]


def ids(project) -> list[int]:
    return [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")]


def ledger(project) -> dict[str, tuple]:
    rows = project.query("SELECT path, items, status FROM ingestkit.files ORDER BY path")
    return {r["path"]: (r["items"], r["status"]) for r in rows}


# -- globs ---------------------------------------------------------------------


def test_glob_reads_every_file_in_sorted_order(project):
    project.write("drops/b.csv", csv_file((3, "c")))
    project.write("drops/a.csv", csv_file((1, "a"), (2, "b")))
    project.write("drops/sub/c.csv", csv_file((4, "d")))
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/**/*.csv")'))
    result = project.run("-v")
    assert result.exit_code == 0, result.output
    assert ids(project) == [1, 2, 3, 4]
    order = project.query("SELECT key FROM ingestkit.items ORDER BY finished_at, key")
    assert [r["key"] for r in order] == ["1", "2", "3", "4"]


def test_glob_one_error_item_per_damaged_file_keyed_by_its_path(project):
    project.write("drops/a.csv", csv_file((1, "a")))
    project.write("drops/b.csv", b"id,na\xffme\n5,x\n")  # the header cannot be read
    project.write("drops/c.csv", csv_file((2, "b")))
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/*.csv")'))
    result = project.run()
    assert result.exit_code == 1, result.output
    assert ids(project) == [1, 2]
    errors = items(project, "error")
    assert [e["key"] for e in errors] == ["drops/b.csv"]
    assert "drops/b.csv" in errors[0]["error_message"]
    assert "header" in errors[0]["error_message"]


def test_glob_record_location_is_file_and_line(project):
    project.write("drops/a.csv", csv_file((1, "a")))
    project.write("drops/b.csv", "id,name\n2,b\n3,c,extra\n")
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/*.csv")'))
    result = project.run()
    assert result.exit_code == 1
    (error,) = items(project, "error")
    assert error["error_message"].startswith("drops/b.csv, line 3: expected 2 fields")


def test_glob_matching_nothing_is_one_error_naming_the_pattern(project):
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/*.csv")'))
    result = project.run()
    assert result.exit_code == 1
    (error,) = items(project, "error")
    assert error["key"] == ""
    assert "no file matches" in error["error_message"] and "drops/*.csv" in error["error_message"]


def test_glob_for_jsonl_and_json(project):
    project.write("a/1.jsonl", '{"id": 1, "name": "a"}\n')
    project.write("a/2.jsonl", '{"id": 2, "name": "b"}\n')
    project.write("b/1.json", '[{"id": 3, "name": "c"}]')
    project.write("b/2.json", "{not json")
    project.write(
        "ingest_x.py",
        pipeline('ingestkit.read_jsonl("a/*.jsonl")')
        + pipeline('ingestkit.read_json("b/*.json")').replace("process_row", "process_other"),
    )
    result = project.run()
    assert result.exit_code == 1, result.output
    assert ids(project) == [1, 2, 3]
    (error,) = items(project, "error")
    assert error["key"] == "b/2.json"


# -- the file ledger -------------------------------------------------------------


def test_unchanged_files_are_not_parsed_again(project):
    for n in range(3):
        project.write(f"drops/{n}.csv", csv_file((n * 10 + 1, "a"), (n * 10 + 2, "b")))
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/*.csv")'))
    first = project.run()
    assert first.exit_code == 0, first.output
    assert ledger(project) == {f"drops/{n}.csv": (2, "complete") for n in range(3)}

    project.write("drops/1.csv", csv_file((11, "changed"), (12, "b")))
    second = project.run()
    assert second.exit_code == 0, second.output
    assert "2 files skipped" in second.output
    counts = project.scalar("SELECT counts FROM ingestkit.batches ORDER BY started_at DESC LIMIT 1")
    # only the changed file's records ran: the one changed, its neighbour unchanged
    assert counts["succeeded"] == 1 and counts["unchanged"] == 5, counts
    assert [r["key"] for r in items(project)] == ["11"]

    third = project.run("--reprocess")
    assert third.exit_code == 0
    assert "skipped" not in third.output
    assert len(items(project, "succeeded")) == 6


def test_a_file_with_a_failed_item_is_read_again(project):
    project.write("drops/a.csv", csv_file((1, "a"), ("x", "bad")))
    project.write("drops/b.csv", csv_file((2, "b")))
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/*.csv")'))
    first = project.run()
    assert first.exit_code == 1
    assert ledger(project) == {"drops/a.csv": (2, "failed"), "drops/b.csv": (1, "complete")}
    second = project.run()
    assert second.exit_code == 1
    assert "1 file skipped" in second.output
    (failed,) = items(project, "failed")
    assert failed["key"] == "x"


def test_dry_run_writes_no_ledger(project):
    project.write("drops/a.csv", csv_file((1, "a")))
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/*.csv")'))
    assert project.run("--dry-run").exit_code == 0
    assert ledger(project) == {}
    assert project.run().exit_code == 0
    assert ids(project) == [1]


def test_node_id_selection_does_not_mark_files_complete(project):
    project.write("drops/a.csv", csv_file((1, "a"), (2, "b")))
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/*.csv")'))
    assert project.run("ingest_x.py::process_row[1]").exit_code == 0
    assert ledger(project) == {"drops/a.csv": (2, "partial")}
    assert project.run().exit_code == 0
    assert ids(project) == [1, 2]


# -- read_json(at=...) -----------------------------------------------------------


def test_read_json_at_a_dotted_path(project):
    doc = {
        "meta": {"count": 2, "skip": [{"id": 99}], "s": "a ] } string"},
        "data": {"items": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]},
    }
    project.write("doc.json", json.dumps(doc))
    project.write("ingest_x.py", pipeline('ingestkit.read_json("doc.json", at="data.items")'))
    result = project.run()
    assert result.exit_code == 0, result.output
    assert ids(project) == [1, 2]


def test_read_json_at_a_missing_path_is_one_error(project):
    project.write("doc.json", json.dumps({"data": {"rows": []}}))
    project.write("ingest_x.py", pipeline('ingestkit.read_json("doc.json", at="data.items")'))
    result = project.run()
    assert result.exit_code == 1
    (error,) = items(project, "error")
    message = error["error_message"]
    assert "'data.items'" in message and "no member 'items'" in message


# -- read_xlsx -------------------------------------------------------------------


def write_xlsx(path, rows, title="Sheet1", header_row=1):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = title
    for _ in range(header_row - 1):
        sheet.append(["a title row"])
    for row in rows:
        sheet.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


def test_read_xlsx_rows_by_header_with_sheet_and_row_locations(project):
    write_xlsx(
        project.root / "data/people.xlsx",
        [("id", "name"), (1, "a"), (None, None), (2, "b"), ("x", "bad")],
        title="People",
        header_row=2,
    )
    project.write(
        "ingest_x.py",
        pipeline('ingestkit.read_xlsx("data/people.xlsx", sheet="People", header_row=2)'),
    )
    result = project.run()
    assert result.exit_code == 1, result.output
    assert ids(project) == [1, 2]
    (failed,) = items(project, "failed")
    assert failed["key"] == "x"
    assert "data/people.xlsx:People!6" in result.output


def test_read_xlsx_damaged_file_in_a_glob(project):
    write_xlsx(project.root / "data/a.xlsx", [("id", "name"), (1, "a")])
    write_xlsx(project.root / "data/b.xlsx", [("id", "name"), (2, "b")])
    data = (project.root / "data/b.xlsx").read_bytes()
    (project.root / "data/b.xlsx").write_bytes(data[: len(data) // 2])  # cut short
    project.write("ingest_x.py", pipeline('ingestkit.read_xlsx("data/*.xlsx")'))
    result = project.run()
    assert result.exit_code == 1, result.output
    assert ids(project) == [1]
    (error,) = items(project, "error")
    assert error["key"] == "data/b.xlsx"
    assert "not a readable .xlsx" in error["error_message"]


def test_read_xlsx_unknown_sheet_names_the_sheets(project):
    write_xlsx(project.root / "data/a.xlsx", [("id", "name"), (1, "a")])
    project.write("ingest_x.py", pipeline('ingestkit.read_xlsx("data/a.xlsx", sheet="Nope")'))
    result = project.run()
    assert result.exit_code == 1
    (error,) = items(project, "error")
    assert "no sheet 'Nope'" in error["error_message"] and "'Sheet1'" in error["error_message"]


# -- read_parquet ----------------------------------------------------------------


def write_parquet(path, rows, row_group_size=None):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{"id": i, "name": n} for i, n in rows])
    pq.write_table(table, path, row_group_size=row_group_size)


def test_read_parquet_streams_row_groups(project):
    write_parquet(
        project.root / "data/p.parquet", [(i, f"n{i}") for i in range(1, 51)], row_group_size=7
    )
    project.write("ingest_x.py", pipeline('ingestkit.read_parquet("data/p.parquet")'))
    result = project.run()
    assert result.exit_code == 0, result.output
    assert ids(project) == list(range(1, 51))


def test_read_parquet_location_is_row_number(project):
    write_parquet(project.root / "data/p.parquet", [(1, "a"), (-1, "b")])
    project.write(
        "ingest_x.py",
        pipeline('ingestkit.read_parquet("data/p.parquet")').replace(
            "    db.upsert", "    assert record['id'] > 0, 'negative id'\n    db.upsert"
        ),
    )
    result = project.run()
    assert result.exit_code == 1
    assert "data/p.parquet:row 2" in result.output


def test_read_parquet_damaged_file_in_a_glob(project):
    write_parquet(project.root / "data/a.parquet", [(1, "a")])
    write_parquet(project.root / "data/b.parquet", [(2, "b")])
    data = (project.root / "data/b.parquet").read_bytes()
    (project.root / "data/b.parquet").write_bytes(data[:-12])  # the footer is gone
    project.write("ingest_x.py", pipeline('ingestkit.read_parquet("data/*.parquet")'))
    result = project.run()
    assert result.exit_code == 1, result.output
    assert ids(project) == [1]
    (error,) = items(project, "error")
    assert error["key"] == "data/b.parquet"
    assert "not a readable Parquet file" in error["error_message"]


def test_single_damaged_parquet_is_one_error_for_the_processor(project):
    (project.root / "data").mkdir()
    (project.root / "data/p.parquet").write_bytes(b"PAR1 this is not parquet")
    project.write("ingest_x.py", pipeline('ingestkit.read_parquet("data/p.parquet")'))
    result = project.run()
    assert result.exit_code == 1
    (error,) = items(project, "error")
    assert error["key"] == "" and "data/p.parquet" in error["error_message"]


def test_damaged_xlsx_is_not_a_zip(project):
    (project.root / "data").mkdir()
    with zipfile.ZipFile(project.root / "data/a.xlsx", "w") as z:
        z.writestr("hello.txt", "not a workbook")
    project.write("ingest_x.py", pipeline('ingestkit.read_xlsx("data/a.xlsx")'))
    result = project.run()
    assert result.exit_code == 1
    (error,) = items(project, "error")
    assert "data/a.xlsx" in error["error_message"]
    assert "Traceback" not in result.output


# -- progress by bytes -----------------------------------------------------------


def test_file_reader_gives_a_byte_total_and_position(tmp_path):
    import ingestkit

    for n in range(3):
        (tmp_path / f"{n}.csv").write_text(csv_file(*((n * 100 + i, "x" * 50) for i in range(100))))
    reader = ingestkit.read_csv(str(tmp_path / "*.csv"))
    total = sum(p.stat().st_size for p in tmp_path.glob("*.csv"))
    seen = []
    for _ in reader.entries():
        seen.append(reader.bytes_read)
    assert reader.bytes_total == total
    assert seen == sorted(seen) and 0 < seen[0] and seen[-1] <= total
    assert reader.bytes_read == total


def test_terminal_progress_share_for_a_file_source():
    from types import SimpleNamespace

    from ingestkit.terminal import TerminalReporter

    source = SimpleNamespace(bytes_read=25_000_000, bytes_total=100_000_000)
    reporter = SimpleNamespace(total=None, src=source)
    share, count = TerminalReporter._share(reporter, 1234)  # type: ignore[arg-type]
    assert share == 0.25
    assert count == "1,234 items, 25.0/100.0 MB"


def test_a_failure_while_its_file_is_read_marks_only_that_file(project):
    """A failure found while its file is still being read (a chunk before the file's
    end) is that file's: the other files of the glob stay complete."""
    rows = [(i, "a") for i in range(1, 301)]
    rows[4] = ("x", "bad")  # int("x") fails in the first chunk of a.csv
    project.write("drops/a.csv", csv_file(*rows))
    project.write("drops/b.csv", csv_file(*((i, "b") for i in range(400, 410))))
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/*.csv")'))
    first = project.run("--chunk-size", "50")
    assert first.exit_code == 1, first.output
    assert ledger(project) == {"drops/a.csv": (300, "failed"), "drops/b.csv": (10, "complete")}
    second = project.run("--chunk-size", "50")
    assert "1 file skipped" in second.output, second.output


def test_ledger_under_workers(project):
    project.write("drops/a.csv", csv_file(*((i, "a") for i in range(1, 40)), ("x", "bad")))
    project.write("drops/b.csv", csv_file(*((i, "b") for i in range(100, 140))))
    project.write("ingest_x.py", pipeline('ingestkit.read_csv("drops/*.csv")'))
    first = project.run("-n", "2")
    assert first.exit_code == 1, first.output
    assert ledger(project) == {"drops/a.csv": (40, "failed"), "drops/b.csv": (40, "complete")}
    second = project.run("-n", "2")
    assert second.exit_code == 1
    assert "1 file skipped" in second.output
    assert second.counts == {"failed": 1, "unchanged": 79}


def test_read_json_at_skips_large_members_with_brackets_in_strings(project):
    doc = {
        "meta": {"big": ['x\\"]}' * 5] * 20_000, "s": 'q"}]'},
        "n": -1.5e3,
        "data": {"x": [1, [2, {"y": "]"}]], "items": [{"id": 1, "name": "a"}]},
        "after": 3,
    }
    project.write("doc.json", json.dumps(doc))  # ~780 KB before the array: many reads
    project.write("ingest_x.py", pipeline('ingestkit.read_json("doc.json", at="data.items")'))
    result = project.run()
    assert result.exit_code == 0, result.output
    assert ids(project) == [1]


def test_typed_glob_checks_each_files_header(project):
    project.write("drops/a.csv", csv_file((1, "a")))
    project.write("drops/b.csv", "id,nom\n2,b\n")
    project.write(
        "ingest_x.py",
        """
        from dataclasses import dataclass
        import ingestkit

        @dataclass
        class Row:
            id: int
            name: str

        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, name text NOT NULL)")

        @ingestkit.source(ingestkit.read_csv("drops/*.csv"), key="id")
        def process_row(record: Row, db):
            db.insert("t", record)
        """,
    )
    result = project.run()
    assert result.exit_code == 1, result.output
    assert ids(project) == [1]
    (error,) = items(project, "error")
    assert error["key"] == "drops/b.csv"
    assert "missing column name" in error["error_message"], error
    assert "the header has: id, nom" in error["error_message"]


def test_read_parquet_entries_are_to_pylist_rows(tmp_path):
    """Each record is what pyarrow's own to_pylist gives for the row, of every type
    (a repeated column name keeps its last column's value, as there), and each
    location is the 1-based row number, across batches and thousands."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import datetime
    import decimal

    import ingestkit
    from ingestkit.parquet import BATCH_ROWS
    from ingestkit.sources import Entry

    rows = BATCH_ROWS * 2 + 1234
    start = datetime.datetime(2024, 1, 1)
    table = pa.table(
        [
            pa.array(range(rows), pa.int64()),
            pa.array([None if i % 7 == 0 else f"n{i}" for i in range(rows)]),
            pa.array([i / 4 for i in range(rows)]),
            pa.array([decimal.Decimal(i) / 100 for i in range(rows)], pa.decimal128(12, 2)),
            pa.array([start + datetime.timedelta(seconds=i) for i in range(rows)]),
            pa.array([[i, None] if i % 3 else None for i in range(rows)], pa.list_(pa.int32())),
            pa.array([{"x": i, "y": str(i)} for i in range(rows)]),
            pa.array([[("k", i)] for i in range(rows)], pa.map_(pa.string(), pa.int64())),
            pa.array([-i for i in range(rows)], pa.int64()),
        ],
        names=["id", "name", "amount", "price", "at", "tags", "nested", "map", "id"],
    )
    path = tmp_path / "p.parquet"
    pq.write_table(table, path, row_group_size=5000)
    expected = [
        Entry(record, f"{path}:row {n}")
        for n, record in enumerate(pq.ParquetFile(path).read().to_pylist(), 1)
    ]
    assert expected[1].record["id"] == -1 and list(expected[1].record)[0] == "id"
    entries = list(ingestkit.read_parquet(path).entries())
    assert entries == expected
    assert [type(e) for e in entries] == [Entry] * rows
    assert [list(e.record) for e in entries[:2]] == [list(e.record) for e in expected[:2]]
    assert entries[999].location == f"{path}:row 1000"


def test_read_parquet_wide_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import ingestkit

    table = pa.table({f"c{i}": pa.array([i, None, -i]) for i in range(300)})
    path = tmp_path / "wide.parquet"
    pq.write_table(table, path)
    records = [e.record for e in ingestkit.read_parquet(path).entries()]
    assert records == table.to_pylist()


def test_read_parquet_ledger_counts_the_entries_handed_out(tmp_path):
    """A reading stopped early records the entries read so far, as each reader does."""
    pytest.importorskip("pyarrow")
    import ingestkit
    from ingestkit.parquet import BATCH_ROWS

    class Ledger:
        rootdir = tmp_path

        def __init__(self):
            self.reads = []

        def skip(self, path, size, sha256):
            return False

        def header_problem(self, path, columns):
            return None

        def read(self, path, size, sha256, items, complete):
            self.reads.append((path.name, items, complete))

    write_parquet(tmp_path / "p.parquet", [(i, f"n{i}") for i in range(BATCH_ROWS + 10)])
    reader = ingestkit.read_parquet(tmp_path / "p.parquet")
    for stop in (0, 1, 7, BATCH_ROWS, BATCH_ROWS + 3):
        ledger = Ledger()
        entries = reader.entries(ledger=ledger)
        for _ in range(stop):
            next(entries)
        entries.close()
        assert ledger.reads == ([("p.parquet", stop, False)] if stop else [])
    ledger = Ledger()
    assert sum(1 for _ in reader.entries(ledger=ledger)) == BATCH_ROWS + 10
    assert ledger.reads == [("p.parquet", BATCH_ROWS + 10, True)]


def test_read_parquet_read_file_of_a_subclass_is_read(tmp_path):
    """A reader whose read_file is replaced (a subclass, a patch) is read through it."""
    pytest.importorskip("pyarrow")
    import ingestkit
    from ingestkit.sources import Entry

    class Tagged(ingestkit.read_parquet):
        def read_file(self, raw, path, file_key):
            for entry in super().read_file(raw, path, file_key):
                yield Entry({**entry.record, "tag": 1}, entry.location)
            yield Entry(None, f"{path}:end", "no more")

    write_parquet(tmp_path / "p.parquet", [(1, "a"), (2, "b")])
    entries = list(Tagged(tmp_path / "p.parquet").entries())
    assert [e.record for e in entries] == [
        {"id": 1, "name": "a", "tag": 1},
        {"id": 2, "name": "b", "tag": 1},
        None,
    ]
    assert entries[-1].error == "no more"
