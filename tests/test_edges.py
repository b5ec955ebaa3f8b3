"""Edges of the user contract that the other suites do not reach.

Config files and plugins, the values ``db.insert`` writes, keys, malformed ``-k``,
``--lf``/``--ff`` corner cases, migrations, terminal output, internal errors and
transaction escapes.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

import ingestkit

ONE = "def process_once():\n    pass\n"


def out_of(result) -> str:
    return f"exit {result.exit_code}\n{result.output}"


# -- configuration and plugins -----------------------------------------------------


def test_config_file_that_is_not_valid_toml_is_a_usage_error(project):
    project.write("ingest_ok.py", ONE)
    project.write("ingestkit.toml", "paths = [unclosed\n")
    result = project.run()
    assert result.exit_code == 4, out_of(result)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("ERROR: cannot read ")
    assert "ingestkit.toml" in lines[0]
    assert "Traceback" not in result.output


def test_unknown_config_keys_are_a_usage_error_naming_them(project):
    project.write("ingest_ok.py", ONE)
    project.write("ingestkit.toml", 'bogus = 1\nalso_bogus = "x"\nfiles = ["ingest_*.py"]\n')
    result = project.run()
    assert result.exit_code == 4, out_of(result)
    assert "unknown config key(s): also_bogus, bogus" in result.output
    assert "ingestkit.toml" in result.output
    assert result.batch is None  # nothing ran


def test_addopts_given_as_a_string_is_split_like_a_shell(project):
    project.write(
        "ingest_a.py",
        "def process_alpha():\n    pass\n\n\ndef process_beta():\n    pass\n",
    )
    project.write("ingestkit.toml", "addopts = \"-v -k 'alpha'\"\n")
    result = project.run()
    assert result.exit_code == 0, out_of(result)
    assert [i["processor"] for i in result.items] == ["ingest_a.py::process_alpha"]
    assert "ingest_a.py::process_alpha[] SUCCEEDED" in result.output


def test_essential_plugins_cannot_be_blocked(project):
    project.write("ingest_ok.py", ONE)
    result = project.run("-p", "no:collection")
    assert result.exit_code == 4, out_of(result)
    assert result.output.strip() == "ERROR: plugin 'collection' cannot be disabled"


def test_plugin_module_that_cannot_be_imported_is_a_usage_error(project):
    project.write("ingest_ok.py", ONE)
    result = project.run("-p", "no_such_ingestkit_plugin_mod")
    assert result.exit_code == 4, out_of(result)
    assert "-p no_such_ingestkit_plugin_mod: cannot import plugin module" in result.output
    assert "Traceback" not in result.output


def test_plugin_loaded_with_p_adds_header_lines(project, monkeypatch):
    project.write(
        "myplugin_hdr.py",
        """
import ingestkit

@ingestkit.hookimpl
def ingestkit_report_header(config):
    return ["plugin header line one", "plugin header line two"]
""",
    )
    project.write(
        "other_hdr.py",
        """
import ingestkit

@ingestkit.hookimpl
def ingestkit_report_header(config):
    return "a single header string"
""",
    )
    project.write("ingest_ok.py", ONE)
    monkeypatch.syspath_prepend(str(project.root))
    result = project.run("-p", "myplugin_hdr", "-pother_hdr")
    assert result.exit_code == 0, out_of(result)
    out = result.output
    assert "plugin header line one\nplugin header line two\n" in out
    assert "a single header string\n" in out
    assert out.index("plugin header line one") < out.index("collected 1 processor")


def test_p_no_in_addopts_blocks_a_builtin_plugin(project):
    project.write("ingest_ok.py", ONE)
    project.write("ingestkit.toml", 'addopts = ["-p", "no:terminal"]\n')
    result = project.run()
    assert result.exit_code == 0, out_of(result)
    assert "session starts" not in result.output
    assert "succeeded" not in result.output
    assert result.counts == {"succeeded": 1}


def test_config_fixture_values_and_unknown_key(project):
    project.write("ingestkit.toml", 'store_payloads = "all"\n')
    project.write(
        "ingest_cfg.py",
        """
def process_cfg(config, log):
    log.warning("store=%s files=%s", config.get("store_payloads"), config.getini("files"))
    config.getini("no_such_key")
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    (item,) = result.items
    assert item["status"] == "failed"
    assert item["error_type"] == "ValueError"
    assert item["error_message"] == "unknown config key 'no_such_key'"
    assert "store=all files=['ingest_*.py']" in item["log"]


def test_store_payloads_all_on_the_command_line_stores_succeeded_records(project):
    project.write(
        "ingest_rows.py",
        """
import ingestkit

@ingestkit.source([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], key="id")
def process_row(record):
    pass
""",
    )
    result = project.run("--store-payloads", "all")
    assert result.exit_code == 0, out_of(result)
    assert {i["key"]: i["payload"] for i in result.items} == {
        "1": {"id": 1, "name": "a"},
        "2": {"id": 2, "name": "b"},
    }
    again = project.run("--reprocess")
    assert [i["payload"] for i in again.items] == [None, None]


# -- -k expressions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("(", "unexpected end of expression"),
        ("a and", "unexpected end of expression"),
        ("or b", "unexpected 'or'"),
        ("a )", "unexpected ')'"),
        ("(a b", "expected ')'"),
        ("and", "unexpected 'and'"),
    ],
)
def test_malformed_keyword_expression_is_a_one_line_usage_error(project, expression, message):
    project.write("ingest_ok.py", ONE)
    result = project.run("-k", expression)
    assert result.exit_code == 4, out_of(result)
    lines = result.output.strip().splitlines()
    assert lines == [f"ERROR: -k {expression!r}: {message}"]


def test_blank_keyword_expression_selects_everything(project):
    project.write("ingest_ok.py", ONE)
    result = project.run("-k", "   ")
    assert result.exit_code == 0, out_of(result)
    assert result.counts == {"succeeded": 1}


# -- values db.insert writes -------------------------------------------------------

TYPES_TABLE = """
CREATE TABLE IF NOT EXISTS typed (
    id int PRIMARY KEY,
    flag boolean, amount numeric, day date, at timestamp, at_tz timestamptz, clock time,
    span interval, blob bytea, doc jsonb, doc2 jsonb, ints int[], grid int[][],
    texts text[], uid uuid, note text, ratio double precision, flags boolean[], addr inet,
    clocks time[]
)
"""


def test_insert_round_trips_python_values_exactly(project):
    project.write(
        "ingest_types.py",
        f'''
import datetime
import decimal
import json
import ipaddress
import uuid

import psycopg2.extras

import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("""{TYPES_TABLE}""")

ROWS = [
    dict(
        id=1,
        flag=True,
        amount=decimal.Decimal("12345678901234567890.000123"),
        day=datetime.date(2024, 2, 29),
        at=datetime.datetime(2024, 2, 29, 23, 59, 58, 123456),
        at_tz=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        clock=datetime.time(13, 14, 15, 500000),
        span=datetime.timedelta(days=2, hours=3, seconds=4, microseconds=5),
        blob=b"\\x00\\x01\\\\tab\\there\\xff",
        doc=psycopg2.extras.Json({{"a": [1, 2, {{"b": None}}], "s": "q\\"uote\\ttab"}}),
        doc2={{"nested": {{"x": "back\\\\slash\\nnewline"}}, "n": 1.5}},
        ints=[1, None, -3],
        grid=[[1, 2], [3, 4]],
        texts=["plain", 'with "quotes"', "back\\\\slash", None, "NULL", "", "a,b", "{{x}}"],
        uid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        note="tab\\there\\nnewline\\r\\ncr and back\\\\slash \\\\N",
        ratio=0.1,
        flags=[True, False, None],
        addr=ipaddress.ip_address("192.0.2.7"),
        clocks=[datetime.time(1, 2, 3), datetime.time(23, 59)],
    ),
    dict(id=2, flag=False, texts=[], ints=(7, 8), span=datetime.timedelta(0)),
    dict(id=3, flag=None, note=None, doc=None, texts=None),
]

@ingestkit.source(ROWS, key="id")
def process_row(record, db):
    db.insert("typed", record)
''',
    )
    result = project.run()
    assert result.exit_code == 0, out_of(result)
    assert result.counts == {"succeeded": 3}
    rows = {r["id"]: r for r in project.query("SELECT * FROM typed ORDER BY id")}
    one = rows[1]
    assert one["flag"] is True
    assert one["amount"] == decimal.Decimal("12345678901234567890.000123")
    assert one["day"] == datetime.date(2024, 2, 29)
    assert one["at"] == datetime.datetime(2024, 2, 29, 23, 59, 58, 123456)
    assert one["at_tz"] == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert one["clock"] == datetime.time(13, 14, 15, 500000)
    assert one["span"] == datetime.timedelta(days=2, hours=3, seconds=4, microseconds=5)
    assert bytes(one["blob"]) == b"\x00\x01\\tab\there\xff"
    assert one["doc"] == {"a": [1, 2, {"b": None}], "s": 'q"uote\ttab'}
    assert one["doc2"] == {"nested": {"x": "back\\slash\nnewline"}, "n": 1.5}
    assert one["ints"] == [1, None, -3]
    assert one["grid"] == [[1, 2], [3, 4]]
    assert one["texts"] == ["plain", 'with "quotes"', "back\\slash", None, "NULL", "", "a,b", "{x}"]
    assert str(one["uid"]) == "12345678-1234-5678-1234-567812345678"
    assert one["note"] == "tab\there\nnewline\r\ncr and back\\slash \\N"
    assert one["ratio"] == 0.1
    assert one["flags"] == [True, False, None]
    assert one["addr"] == "192.0.2.7"
    assert one["clocks"] == [datetime.time(1, 2, 3), datetime.time(23, 59)]
    two = rows[2]
    assert two["flag"] is False
    assert two["texts"] == []
    assert two["ints"] == [7, 8]
    assert two["span"] == datetime.timedelta(0)
    three = rows[3]
    assert (three["flag"], three["note"], three["doc"], three["texts"]) == (None, None, None, None)


@pytest.mark.parametrize(
    ("call", "error_type", "message"),
    [
        ('db.insert("t", [record, ("not", "a dict")])', "TypeError", "got tuple"),
        ('db.insert("t", {})', "ValueError", "db.insert got an empty row"),
        ('db.insert("a.b.c", record)', "ValueError", "not a table name: 'a.b.c'"),
        ('db.insert(".t", record)', "ValueError", "not a table name: '.t'"),
    ],
)
def test_insert_rejects_bad_rows_and_table_names_in_the_item(project, call, error_type, message):
    project.write(
        "ingest_bad.py",
        f"""
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source([{{"id": 1}}, {{"id": 2}}], key="id")
def process_row(record, db):
    if record["id"] == 2:
        {call}
    else:
        db.insert("t", record)
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    assert result.statuses() == {"1": "succeeded", "2": "failed"}
    bad = result.by_key()["2"]
    assert bad["error_type"] == error_type
    assert message in bad["error_message"]
    assert project.query("SELECT id FROM t") == [{"id": 1}]


# -- sources and keys --------------------------------------------------------------


def test_reader_iterates_as_plain_records_and_raises_on_a_bad_row(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("id,name\n1,a\n2,b\n")
    assert list(ingestkit.read_csv(good)) == [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,a\n2,b,extra\n3,c\n")
    records = iter(ingestkit.read_csv(bad))
    assert next(records) == {"id": "1", "name": "a"}
    with pytest.raises(Exception, match=r"bad\.csv, line 3: expected 2 fields, got 3"):
        next(records)
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"id": 1}\n\n{"id": 2}\n')
    assert list(ingestkit.read_jsonl(lines)) == [{"id": 1}, {"id": 2}]
    assert repr(ingestkit.read_jsonl(lines)) == f"read_jsonl({str(lines)!r})"


def test_a_string_given_as_source_is_an_error_item_not_a_crash(project):
    project.write(
        "ingest_str.py",
        """
import ingestkit

@ingestkit.source("data/customers.csv", key="id")
def process_str(record):
    pass

def process_after():
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    by_proc = {i["processor"]: i for i in result.items}
    item = by_proc["ingest_str.py::process_str"]
    assert (item["key"], item["status"]) == ("", "error")
    assert "a source must be an iterable of records, not str" in item["error_message"]
    assert by_proc["ingest_str.py::process_after"]["status"] == "succeeded"


def test_unreadable_source_outside_the_rootdir_names_its_absolute_path(project, tmp_path):
    missing = tmp_path / "elsewhere" / "missing.csv"
    project.write(
        "ingest_abs.py",
        f"""
import ingestkit

@ingestkit.source(ingestkit.read_csv({str(missing)!r}), key="id")
def process_abs(record):
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    (item,) = result.items
    assert (item["key"], item["status"]) == ("", "error")
    assert str(missing) in item["error_message"]


KEYED = """
import datetime
import ingestkit

RECORDS = [
    {"a": "x", "b": 1},
    {"a": "y", "b": None},
    {"a": "", "b": 2},
    {"b": 3},
    {"a": "z", "b": 4, "when": datetime.date(2024, 5, 6), "raw": b"\\xffok", "tags": {"t"}},
]

@ingestkit.source(RECORDS, key=("a", "b"))
def process_pair(record):
    if record.get("raw"):
        raise ValueError("cannot handle raw bytes")
"""


def test_tuple_keys_join_with_a_bar_and_missing_or_empty_fields_are_errors(project):
    project.write("ingest_keyed.py", KEYED)
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    statuses = result.statuses()
    assert statuses == {
        "x|1": "succeeded",
        "#2": "error",
        "#3": "error",
        "#4": "error",
        "z|4": "failed",
    }
    items = result.by_key()
    assert items["#2"]["error_message"] == "record 2: key field 'b' is empty"
    assert items["#3"]["error_message"] == "record 3: key field 'a' is empty"
    assert items["#4"]["error_message"] == "record 4: record has no key field 'a'"
    assert items["#4"]["payload"] == {"b": 3}
    # a record with values JSON cannot hold is still stored, tagged so --lf gets them back
    assert items["z|4"]["payload"] == {
        "a": "z",
        "b": 4,
        "when": {"$ingestkit": "date", "value": "2024-05-06"},
        "raw": {"$ingestkit": "bytes", "value": "/29r"},
        "tags": {"$ingestkit": "set", "value": ["t"]},
    }
    assert items["z|4"]["error_message"] == "cannot handle raw bytes"


def test_key_callable_returning_none_or_raising_is_an_error_item(project):
    project.write(
        "ingest_keyfn.py",
        """
import ingestkit

def key_of(record):
    if record["n"] == 3:
        raise KeyError("code")
    return record.get("code")

@ingestkit.source([{"n": 1, "code": "A"}, {"n": 2}, {"n": 3}], key=key_of)
def process_keyfn(record):
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    assert result.statuses() == {"A": "succeeded", "#2": "error", "#3": "error"}
    items = result.by_key()
    assert items["#2"]["error_message"] == "record 2: the key function returned None"
    assert items["#3"]["error_message"] == "record 3: key= raised KeyError: 'code'"


@pytest.mark.parametrize("key", ["42", "()", "('a', 1)"])
def test_key_of_a_bad_type_fails_its_processor_and_the_batch_goes_on(project, key):
    project.write(
        "ingest_badkey.py",
        f"""
import ingestkit

@ingestkit.source([{{"a": 1}}], key={key})
def process_badkey(record):
    pass

def process_after():
    pass
""",
    )
    result = project.run()
    assert "key= must be a field name, a tuple of them, a callable or None" in result.output
    assert "INTERNAL ERROR" not in result.output
    assert result.exit_code == 1, out_of(result)
    statuses = {i["processor"]: i["status"] for i in result.items}
    assert statuses["ingest_badkey.py::process_after"] == "succeeded"


# -- --lf / --ff corner cases ------------------------------------------------------

FAILING = """
import ingestkit

@ingestkit.source([{{"id": i}} for i in range(1, 6)], key="id")
def process_{name}(record):
    if record["id"] % 2 == 0:
        raise ValueError("even")
"""


def test_lf_when_the_failing_processor_no_longer_exists_is_a_note_not_a_crash(project):
    project.write("ingest_a.py", FAILING.format(name="a"))
    project.write("ingest_b.py", FAILING.format(name="b") + FAILING.format(name="c"))
    assert project.run().counts == {"succeeded": 9, "failed": 6}
    # process_b is renamed away, ingest_a.py is deleted: their failures cannot be rerun
    (project.root / "ingest_a.py").unlink()
    project.write("ingest_b.py", FAILING.format(name="c").replace("% 2 == 0", "> 99"))
    result = project.run("--lf", "-v")
    assert result.exit_code == 0, out_of(result)
    assert result.counts == {"succeeded": 2}
    assert {i["processor"] for i in result.items} == {"ingest_b.py::process_c"}
    # nothing left that can be rerun: the notes say why
    result = project.run("--lf")
    assert result.exit_code == 0, out_of(result)
    assert "nothing to rerun" in result.output
    for gone in ("ingest_a.py::process_a", "ingest_b.py::process_b"):
        assert f"--lf: {gone} has failed items but no longer exists; they are not rerun" in (
            result.output
        )
    assert "Traceback" not in result.output


def test_lf_with_a_key_selector_reruns_only_that_key(project):
    project.write("ingest_a.py", FAILING.format(name="a"))
    project.run()
    result = project.run("--lf", "ingest_a.py::process_a[4]")
    assert result.exit_code == 1, out_of(result)
    assert result.statuses() == {"4": "failed"}
    assert result.items[0]["attempt"] == 2


def test_lf_cannot_rerun_a_record_that_could_not_be_read_and_says_so(project):
    project.write(
        "ingest_csv.py",
        """
import ingestkit

@ingestkit.source(ingestkit.read_csv("data.csv"), key="id")
def process_csv(record):
    pass
""",
    )
    project.write("data.csv", b"id,name\n1,ok\n2,bad \xff byte\n3,ok\n")
    first = project.run()
    assert first.exit_code == 1, out_of(first)
    # its key field could be read: its real key (issue 15), but no stored record
    assert first.statuses() == {"1": "succeeded", "2": "error", "3": "succeeded"}
    assert first.by_key()["2"]["payload"] is None
    result = project.run("--lf")
    assert result.exit_code == 1, out_of(result)
    (item,) = result.items
    assert (item["key"], item["status"], item["attempt"]) == ("2", "error", 2)
    assert item["error_message"] == (
        "no stored record to rerun for key '2' (it could not be read): "
        "fix the source and run without --lf"
    )
    project.write("data.csv", "id,name\n1,ok\n2,fixed\n3,ok\n")
    fixed = project.run()
    assert fixed.exit_code == 0, out_of(fixed)
    assert fixed.counts == {"succeeded": 1, "unchanged": 2}


def test_lf_after_the_whole_source_was_unreadable_reads_the_source_again(project):
    project.write(
        "ingest_late.py",
        """
import ingestkit

@ingestkit.source(ingestkit.read_jsonl("late.jsonl"), key="id")
def process_late(record):
    pass
""",
    )
    first = project.run()
    assert first.exit_code == 1, out_of(first)
    (item,) = first.items
    assert (item["key"], item["status"]) == ("", "error")
    assert "late.jsonl" in item["error_message"]
    project.write("late.jsonl", '{"id": 1}\n{"id": 2}\n')
    result = project.run("--lf")
    assert result.exit_code == 0, out_of(result)
    assert result.statuses() == {"1": "succeeded", "2": "succeeded"}


def test_ff_on_a_processor_without_source_runs_it_once(project):
    project.write(
        "ingest_once.py",
        """
import os

def process_once(item, log):
    log.warning("attempt %s", item.attempt)
    if os.path.exists("broken"):
        raise RuntimeError("broken")
""",
    )
    project.write("broken", "")
    assert project.run().statuses() == {"": "failed"}
    (project.root / "broken").unlink()
    result = project.run("--ff")
    assert result.exit_code == 0, out_of(result)
    assert result.counts == {"succeeded": 1}
    (item,) = result.items
    assert item["attempt"] == 2
    assert "attempt 2" in item["log"]


# -- internal errors and interruptions ---------------------------------------------

TEN = """
import ingestkit

@ingestkit.source(range(10), key=str)
def process_n(record):
    pass
"""


class RaisingPlugin:
    def __init__(self, chunk_error=None, finish_error=None):
        self.chunk_error = chunk_error
        self.finish_error = finish_error

    @ingestkit.hookimpl
    def ingestkit_chunk_finish(self, session, chunk):
        if self.chunk_error is not None:
            raise self.chunk_error

    @ingestkit.hookimpl
    def ingestkit_batch_finish(self, session, exitstatus):
        if self.finish_error is not None:
            raise self.finish_error


def test_internal_error_exits_3_and_finishes_the_batch_row(project):
    project.write("ingest_n.py", TEN)
    result = project.run(plugins=[RaisingPlugin(chunk_error=RuntimeError("plugin broke"))])
    assert result.exit_code == 3, out_of(result)
    assert "RuntimeError: plugin broke" in result.output
    assert "INTERNAL ERROR: ingestkit itself failed (above); please report it." in result.output
    assert result.batch["status"] == "finished"
    assert result.batch["exit_code"] == 3
    assert result.batch["finished_at"] is not None


def test_internal_error_while_finishing_after_an_internal_error_keeps_the_first(project):
    project.write("ingest_n.py", TEN)
    plugin = RaisingPlugin(
        chunk_error=RuntimeError("first problem"), finish_error=RuntimeError("second problem")
    )
    result = project.run(plugins=[plugin])
    assert result.exit_code == 3, out_of(result)
    assert "RuntimeError: first problem" in result.output
    assert "second problem" not in result.output
    assert (result.batch["status"], result.batch["exit_code"]) == ("finished", 3)


def test_a_plugin_failing_to_finish_a_good_batch_is_an_internal_error(project):
    project.write("ingest_n.py", TEN)
    result = project.run(plugins=[RaisingPlugin(finish_error=RuntimeError("cannot finish"))])
    assert result.exit_code == 3, out_of(result)
    assert "RuntimeError: cannot finish" in result.output
    assert "INTERNAL ERROR" in result.output
    assert result.counts == {"succeeded": 10}


def test_database_error_while_the_connection_is_alive_is_an_internal_error(project):
    import psycopg2

    project.write("ingest_n.py", TEN)
    plugin = RaisingPlugin(chunk_error=psycopg2.OperationalError("odd but alive"))
    result = project.run(plugins=[plugin])
    assert result.exit_code == 3, out_of(result)
    assert "OperationalError: odd but alive" in result.output
    assert "lost the database connection" not in result.output
    assert (result.batch["status"], result.batch["exit_code"]) == ("finished", 3)


def test_ctrl_c_while_a_source_is_read_interrupts_the_batch(project):
    project.write(
        "ingest_src.py",
        """
import ingestkit

def records():
    yield {"id": 1}
    yield {"id": 2}
    raise KeyboardInterrupt

@ingestkit.source(records, key="id")
def process_src(record):
    pass

def process_later():
    pass
""",
    )
    result = project.run("--chunk-size", "1")
    assert result.exit_code == 2, out_of(result)
    assert "KeyboardInterrupt" in result.output
    assert result.statuses() == {"1": "succeeded", "2": "succeeded"}
    assert (result.batch["status"], result.batch["exit_code"]) == ("interrupted", 2)


def test_ctrl_c_while_collecting_exits_2_without_a_traceback(project):
    project.write("ingest_ok.py", ONE)
    project.write("ingest_zz.py", "raise KeyboardInterrupt\n")
    result = project.run()
    assert result.exit_code == 2, out_of(result)
    assert result.output.strip() == "interrupted"
    assert result.batch is None or result.batch["status"] != "running"


def test_collect_only_with_a_collection_error_exits_1(project):
    project.write("ingest_ok.py", ONE)
    project.write("ingest_bad.py", "import no_such_module_for_ingestkit\n")
    result = project.run("--collect-only")
    assert result.exit_code == 1, out_of(result)
    assert "ERROR collecting ingest_bad.py" in result.output
    assert "no_such_module_for_ingestkit" in result.output
    assert "ingest_ok.py::process_once  (no source: runs once per batch)" in result.output
    assert "1 processor collected" in result.output


# -- schema migrations -------------------------------------------------------------


def test_schema_is_created_once_and_later_migrations_apply_once(project, monkeypatch):
    import ingestkit.schema

    current = ingestkit.schema.current_version()
    project.write("ingest_ok.py", ONE)
    assert project.run().exit_code == 0
    assert project.run().exit_code == 0
    versions = project.query("SELECT version FROM ingestkit.schema_version")
    assert [r["version"] for r in versions] == [current]
    monkeypatch.setattr(
        ingestkit.schema,
        "migrations",
        lambda: {
            # already applied: schema.sql is the current version
            **{n: "SELECT ingestkit_must_not_run()" for n in range(1, current + 1)},
            current + 1: "ALTER TABLE ingestkit.batches ADD COLUMN x int",
        },
    )
    for _ in range(2):  # the second run must not apply it again
        result = project.run()
        assert result.exit_code == 0, out_of(result)
    versions = project.query("SELECT version FROM ingestkit.schema_version ORDER BY version")
    assert [r["version"] for r in versions] == [current, current + 1]
    assert (
        project.scalar(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_schema = 'ingestkit' AND table_name = 'batches' AND column_name = 'x'"
        )
        == 1
    )
    assert project.scalar("SELECT count(*) FROM ingestkit.batches") == 4


def test_a_version_1_schema_is_migrated_to_the_current_one(project):
    """A database set up by the first release gets the work queue of -n (every
    later migration is safe to apply again on what is there)."""
    import ingestkit.schema

    project.write("ingest_ok.py", ONE)
    assert project.run().exit_code == 0
    project.query(
        "DROP TABLE ingestkit.dispatch, ingestkit.tasks, ingestkit.results;"
        " DELETE FROM ingestkit.schema_version; INSERT INTO ingestkit.schema_version VALUES (1)"
    )
    result = project.run("-n", "2", "--reprocess")
    assert result.exit_code == 0, out_of(result)
    versions = project.query("SELECT version FROM ingestkit.schema_version ORDER BY version")
    assert [r["version"] for r in versions] == sorted({1, *ingestkit.schema.migrations()})
    assert project.scalar("SELECT count(*) FROM ingestkit.items WHERE status = 'succeeded'") == 2


# -- transactions: escapes, dry runs, raw connections ------------------------------

T_SCHEMA = """
import psycopg2
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS side (id int PRIMARY KEY)")
"""


def test_wider_fixture_can_recover_from_a_failed_statement(project):
    project.write(
        "ingest_recover.py",
        """
import psycopg2
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    try:
        db.query("SELECT * FROM staging_that_does_not_exist")
    except psycopg2.errors.UndefinedTable:
        pass
    with db.connection.cursor() as cur:  # the escape hatch, outside any item
        cur.execute("CREATE TABLE t (id int PRIMARY KEY)")

@ingestkit.source([{"id": 1}, {"id": 2}], key="id")
def process_row(record, db):
    db.execute(b"INSERT INTO t VALUES (" + str(record["id"]).encode() + b")")
""",
    )
    result = project.run()
    assert result.exit_code == 0, out_of(result)
    assert result.counts == {"succeeded": 2}
    assert [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")] == [1, 2]


def test_writes_through_the_raw_connection_are_undone_when_the_item_fails(project):
    project.write(
        "ingest_raw.py",
        T_SCHEMA
        + """
@ingestkit.source([{"id": i} for i in range(1, 7)], key="id")
def process_raw(record, db):
    with db.connection.cursor() as cur:
        cur.execute("INSERT INTO side VALUES (%s)", (record["id"],))
    if record["id"] % 3 == 0:
        raise RuntimeError("after a raw write")
""",
    )
    result = project.run("--chunk-size", "6")
    assert result.exit_code == 1, out_of(result)
    assert result.counts == {"succeeded": 4, "failed": 2}
    assert [r["id"] for r in project.query("SELECT id FROM side ORDER BY id")] == [1, 2, 4, 5]


COMMITTING = (
    T_SCHEMA
    + """
@ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
def process_commit(record, db):
    db.execute("INSERT INTO side VALUES (%s)", (record["id"],))
    if record["id"] == 2:
        with db.connection.cursor() as cur:
            cur.execute("COMMIT")
"""
)


def check_commit_failed_item_2(result):
    assert "INTERNAL ERROR" not in result.output
    assert result.exit_code == 1, out_of(result)
    assert result.statuses() == {"1": "succeeded", "2": "failed", "3": "succeeded"}
    message = result.by_key()["2"]["error_message"]
    assert "the processor ended the transaction (COMMIT or ROLLBACK)" in message
    assert "do not commit or roll back inside a processor" in message
    # exactly what the outcome rows say succeeded was written: the COMMIT was refused
    assert sorted(r["id"] for r in result.query("SELECT id FROM side")) == [1, 3]


def test_a_processor_that_commits_on_the_raw_connection_fails(project):
    project.write("ingest_commit.py", COMMITTING)
    check_commit_failed_item_2(project.run("--chunk-size", "1"))


def test_a_raw_commit_does_not_break_the_next_item_of_the_chunk(project):
    project.write("ingest_commit.py", COMMITTING)
    check_commit_failed_item_2(project.run())


def test_dry_run_with_failures_reports_them_and_keeps_nothing(project):
    project.write(
        "ingest_dry.py",
        T_SCHEMA
        + """
@ingestkit.source([{"id": i, "v": "v%d" % i} for i in range(1, 9)], key="id")
def process_dry(record, db):
    db.execute("INSERT INTO side VALUES (%s)", (record["id"],))
    row = dict(record)
    if record["id"] == 3:
        row["v"] = None  # rejected when the buffered rows are written
    db.insert("t", row)
    if record["id"] == 6:
        raise ValueError("six")
""",
    )
    result = project.run("--dry-run", "--chunk-size", "4")
    assert result.exit_code == 1, out_of(result)
    assert result.counts == {"succeeded": 6, "failed": 2}
    assert "NotNullViolation" in result.output and "ValueError" in result.output
    assert "dry run: every write was rolled back" in result.output
    assert project.scalar("SELECT to_regclass('t') IS NULL") is True
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 0
    again = project.run("--chunk-size", "4")
    assert again.counts == {"succeeded": 6, "failed": 2}
    assert [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")] == [1, 2, 4, 5, 7, 8]


def test_dry_run_with_a_source_that_breaks_midway(project):
    project.write(
        "ingest_dry.py",
        T_SCHEMA
        + """
def records():
    for i in range(1, 4):
        yield {"id": i, "v": "x"}
    raise OSError("disk went away")

@ingestkit.source(records, key="id")
def process_dry(record, db):
    db.insert("t", record)
""",
    )
    result = project.run("--dry-run", "--chunk-size", "2")
    assert result.exit_code == 1, out_of(result)
    # the records it gave before breaking are run, in a partial last chunk
    assert result.counts == {"succeeded": 3, "error": 1}
    assert "OSError: disk went away" in result.output
    assert project.scalar("SELECT to_regclass('t') IS NULL") is True


def test_deferred_constraint_violated_at_commit_fails_items_not_the_batch(project):
    project.write(
        "ingest_deferred.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute(
        "CREATE TABLE IF NOT EXISTS parent (id int PRIMARY KEY);"
        "CREATE TABLE IF NOT EXISTS child (id int PRIMARY KEY, parent_id int"
        " REFERENCES parent DEFERRABLE INITIALLY DEFERRED);"
        "INSERT INTO parent VALUES (1) ON CONFLICT DO NOTHING"
    )

@ingestkit.source([{"id": i, "parent_id": 1 if i != 3 else 99} for i in range(1, 6)], key="id")
def process_child(record, db):
    db.execute("INSERT INTO child VALUES (%(id)s, %(parent_id)s)", record)

def process_after():
    pass
""",
    )
    result = project.run()
    assert "INTERNAL ERROR" not in result.output
    assert result.exit_code == 1, out_of(result)
    assert result.statuses()["3"] == "failed"
    assert "ForeignKeyViolation" in result.by_key()["3"]["error_type"]
    assert [r["id"] for r in project.query("SELECT id FROM child ORDER BY id")] == [1, 2, 4, 5]
    statuses = {i["processor"]: i["status"] for i in result.items}
    assert statuses["ingest_deferred.py::process_after"] == "succeeded"


# -- terminal output ---------------------------------------------------------------

PROGRESS = """
import ingestkit

@ingestkit.source([{{"id": i}} for i in range({n})], key="id")
def process_known(record):
    if record["id"] % 7 == 3:
        raise ValueError("sevens")

@ingestkit.source(({{"id": i}} for i in range({n})), key="id")
def process_unknown(record):
    pass
"""


def test_progress_bar_on_a_terminal(project):
    project.write("ingest_p.py", PROGRESS.format(n=40))
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestkit", "--dsn", project.dsn, "--chunk-size", "10"],
        cwd=project.root,
        stdin=subprocess.DEVNULL,
        stdout=child_fd,
        stderr=child_fd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    os.close(child_fd)
    chunks = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(main_fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=10) == 1
    finally:
        proc.kill()
        os.close(main_fd)
    out = b"".join(chunks).decode("utf-8", "replace")
    assert "\r" in out and "\x1b[K" in out  # the progress line is redrawn in place
    # as wide as the terminal (80 columns here): the bar takes the room the text leaves
    assert re.search(r"ingest_p\.py::process_known \[#+ +\]  50% 20/40 · \S+/s", out), out
    assert re.search(r"ingest_p\.py::process_known \[#+\] 100% 40/40 · \S+ · 6 failed", out)
    assert re.search(r"ingest_p\.py::process_unknown 40 items · \S+/s", out), out
    # the final lines replace the progress line instead of following it
    assert "\r\x1b[Kingest_p.py::process_known 34 succeeded, 6 failed in " in out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)  # a terminal gets colour
    assert "34 succeeded" in plain and "rerun the failures: ingestkit --lf" in plain
    assert "\x1b[31m" in out


def test_periodic_plain_progress_lines_when_not_a_terminal(project, monkeypatch):
    import ingestkit.terminal

    monkeypatch.setattr(ingestkit.terminal, "PLAIN_PROGRESS_SECONDS", 0.0)
    project.write("ingest_p.py", PROGRESS.format(n=20))
    result = project.run("--chunk-size", "10")
    assert result.exit_code == 1, out_of(result)
    lines = result.output.splitlines()
    known = r"ingest_p\.py::process_known {}/20 · \S+/s(?: · ETA \S+)? · {} failed"
    assert any(re.fullmatch(known.format(10, 1), x) for x in lines), result.output
    assert any(re.fullmatch(known.format(20, 3), x) for x in lines), result.output
    assert any(re.fullmatch(r"ingest_p\.py::process_unknown 20 items · \S+/s", x) for x in lines)
    assert "\r" not in result.output and "\x1b" not in result.output


def test_skipped_items_are_counted_and_shown(project):
    project.write(
        "ingest_skip.py",
        """
import ingestkit

@ingestkit.source([{"id": i} for i in range(1, 6)], key="id")
def process_skip(record):
    if record["id"] in (2, 4):
        ingestkit.skip("not for us")
""",
    )
    result = project.run()
    assert result.exit_code == 0, out_of(result)
    assert result.counts == {"succeeded": 3, "skipped": 2}
    assert result.by_key()["2"]["status"] == "skipped"
    assert result.by_key()["2"]["error_message"] == "not for us"
    assert "ingest_skip.py::process_skip 3 succeeded, 2 skipped in " in result.output
    assert "3 succeeded, 2 skipped in " in result.output.splitlines()[-1]
    assert "FAILURES" not in result.output and "--lf" not in result.output


def test_teardown_errors_section_with_line_tracebacks(project):
    project.write(
        "ingest_td.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch")
def resource():
    yield 1
    raise RuntimeError("could not close the resource")

def process_once(resource):
    pass
""",
    )
    result = project.run("--tb=line")
    assert result.exit_code == 1, out_of(result)
    out = result.output
    assert "TEARDOWN ERRORS" in out
    assert "batch-scoped fixture teardown: RuntimeError: could not close the resource" in out
    assert "Traceback" not in out
    assert result.counts == {"succeeded": 1}


def test_collection_error_with_tb_long_shows_the_traceback(project):
    project.write("ingest_ok.py", ONE)
    project.write(
        "ingest_boom.py", "def helper():\n    raise RuntimeError('boom at import')\n\nhelper()\n"
    )
    short = project.run()
    assert short.exit_code == 1, out_of(short)
    assert "ingest_boom.py:2: RuntimeError: boom at import" in short.output
    assert "Traceback" not in short.output
    long = project.run("--tb=long")
    assert long.exit_code == 1, out_of(long)
    assert "Traceback (most recent call last)" in long.output
    assert "in helper" in long.output


def test_rerun_command_keeps_keyword_and_paths(project):
    project.write("sub/ingest_rows.py", FAILING.format(name="rows"))
    result = project.run("-k", "rows", "sub/ingest_rows.py::process_rows")
    assert result.exit_code == 1, out_of(result)
    (line,) = [x for x in result.output.splitlines() if x.startswith("rerun the failures:")]
    assert line.endswith(" -k rows sub/ingest_rows.py")
    assert line.startswith("rerun the failures: ingestkit --lf --dsn ")


def test_fixtures_listing_reports_collection_errors(project):
    project.write(
        "conftest.py",
        '''
import ingestkit

@ingestkit.fixture
def shared():
    """A fixture every processor may use."""
''',
    )
    project.write("ingest_ok.py", ONE)
    project.write("ingest_bad.py", "import no_such_module_for_ingestkit\n")
    result = project.run("--fixtures", "ingest_ok.py")
    assert result.exit_code == 0, out_of(result)
    assert "shared -- conftest.py:" in result.output
    assert "    A fixture every processor may use." in result.output
    assert "ERROR collecting ingest_bad.py" not in result.output  # not asked for
    result = project.run("--fixtures")
    assert result.exit_code == 1, out_of(result)
    assert "ERROR collecting ingest_bad.py" in result.output
    assert "shared -- conftest.py:" in result.output


# -- per-item hooks in conftest.py, sources and keys that need care -----------------


def test_conftest_per_item_hooks(project):
    project.write(
        "conftest.py",
        """
import ingestkit

SEEN = []

@ingestkit.hookimpl
def ingestkit_runtest_setup(item):
    if item.key == "2":
        raise RuntimeError("setup refused 2")

@ingestkit.hookimpl
def ingestkit_runtest_call(item, kwargs):
    kwargs["record"] = {**item.record, "wrapped": True}
    item.processor.func(**kwargs)
    return True

@ingestkit.hookimpl
def ingestkit_runtest_teardown(item):
    if item.key == "3":
        raise RuntimeError("teardown refused 3")

@ingestkit.hookimpl
def ingestkit_runtest_makereport(item, report):
    if report.status == "failed" and item.key == "4":
        report.status = "skipped"
        report.error_message = "made a skip by a hook"

@ingestkit.hookimpl
def ingestkit_runtest_logreport(report):
    SEEN.append(f"{report.key}={report.status}")

@ingestkit.hookimpl
def ingestkit_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line("seen by logreport: " + " ".join(SEEN))
""",
    )
    project.write(
        "ingest_hooks.py",
        """
import ingestkit

@ingestkit.source([{"id": i} for i in range(1, 6)], key="id")
def process_hooks(record, log):
    assert record["wrapped"] is True
    log.warning("ran %s", record["id"])
    if record["id"] in (4, 5):
        raise ValueError("four or five")
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    assert result.statuses() == {
        "1": "succeeded",
        "2": "error",
        "3": "error",
        "4": "skipped",
        "5": "failed",
    }
    items = result.by_key()
    assert items["2"]["error_message"] == "setup refused 2"
    assert items["2"]["log"] is None  # the processor never ran
    assert items["3"]["error_message"] == "teardown refused 3"
    assert "ran 3" in items["3"]["log"]
    assert items["4"]["error_message"] == "made a skip by a hook"
    assert "seen by logreport: 1=succeeded 2=error 3=error 4=skipped 5=failed" in result.output


def test_exitfirst_does_not_start_the_next_processor(project):
    project.write("ingest_a.py", FAILING.format(name="a") + FAILING.format(name="b"))
    result = project.run("-x")
    assert result.exit_code == 2, out_of(result)
    assert {i["processor"] for i in result.items} == {"ingest_a.py::process_a"}
    assert "stopping after 1 failure: the rest of the batch was not processed" in result.output


def test_callable_source_asking_for_an_unknown_fixture_is_an_error_item(project):
    project.write(
        "ingest_src.py",
        """
import ingestkit

def rows(no_such_fixture):
    return [{"id": 1}]

@ingestkit.source(rows, key="id")
def process_rows(record):
    pass

def process_other(request):
    assert request.nodeid == "ingest_src.py::process_other[]"
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    by_proc = {i["processor"]: i for i in result.items}
    bad = by_proc["ingest_src.py::process_rows"]
    assert (bad["key"], bad["status"]) == ("", "error")
    assert "fixture 'no_such_fixture' not found" in bad["error_message"]
    assert by_proc["ingest_src.py::process_other"]["status"] == "succeeded"


def test_a_nul_in_a_key_is_stored_visibly(project):
    project.write(
        "ingest_nul.py",
        """
import ingestkit

@ingestkit.source([{"code": "a\\x00b"}], key="code")
def process_nul(record):
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 0, out_of(result)
    assert list(result.statuses()) == ["\\a\\x00b"]  # the escaped form (docs/processors.md)
    assert project.run().counts == {"unchanged": 1}


def test_db_query_of_a_statement_upsert_and_lookup_misuse(project):
    project.write(
        "ingest_db.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    assert db.query("CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, doc jsonb)") == []

@ingestkit.source([{"k": "a", "n": 1}, {"k": "a", "n": 2}, {"k": "b", "n": 3}], key="n")
def process_kv(record, db, lookup):
    db.upsert("kv", {"k": record["k"], "doc": {"n": record["n"]}}, conflict="k")
    if record["n"] == 3:
        lookup("kv", returning="doc")
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    assert result.statuses() == {"1": "succeeded", "2": "succeeded", "3": "failed"}
    assert result.by_key()["3"]["error_message"] == (
        "lookup needs at least one column=value to match"
    )
    assert project.query("SELECT k, doc FROM kv") == [{"k": "a", "doc": {"n": 2}}]


def test_wider_fixture_whose_buffered_row_is_rejected_errors_the_processor(project):
    project.write(
        "ingest_seed.py",
        """
import ingestkit

@ingestkit.fixture(scope="processor")
def seeded(db):
    db.execute("CREATE TABLE IF NOT EXISTS dim (id int PRIMARY KEY, name text NOT NULL)")
    db.insert("dim", [{"id": 1, "name": "one"}, {"id": 2, "name": None}])
    return db.query("SELECT count(*) AS n FROM dim")

@ingestkit.source([{"id": 1}, {"id": 2}], key="id")
def process_seeded(record, seeded):
    pass

def process_after(db):
    db.query("SELECT 1")
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    by_key = {(i["processor"], i["key"]): i for i in result.items}
    for key in ("1", "2"):
        item = by_key[("ingest_seed.py::process_seeded", key)]
        assert item["status"] == "error"
        assert item["error_type"] == "NotNullViolation"
    assert by_key[("ingest_seed.py::process_after", "")]["status"] == "succeeded"
    assert project.scalar("SELECT to_regclass('dim') IS NULL") is True


def test_malformed_dsn_with_a_password_is_masked(project):
    project.write("ingest_ok.py", ONE)
    proc = project.cli(
        "--dsn", "host=127.0.0.1 port=1 password=s3cret-pw dbname", dsn=False, timeout=60
    )
    assert proc.returncode == 4, proc.stdout
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("ERROR: cannot connect to ")
    assert "s3cret-pw" not in proc.stdout


def test_rerun_command_without_dsn_option(project):
    project.write("ingest_a.py", FAILING.format(name="a"))
    proc = project.cli(dsn=False, env={"INGESTKIT_DSN": project.dsn, "DATABASE_URL": ""})
    assert proc.returncode == 1, proc.stdout
    assert "database: " in proc.stdout and "(from INGESTKIT_DSN)" in proc.stdout
    assert "rerun the failures: ingestkit --lf\n" in proc.stdout


def test_output_piped_into_head_does_not_hide_the_outcome(project):
    project.write(
        "ingest_many.py",
        """
import ingestkit

@ingestkit.source(range(5000), key=str)
def process_n(record):
    if record == 4999:
        raise ValueError("the last one fails")
""",
    )
    argv = [sys.executable, "-m", "ingestkit", "--dsn", project.dsn, "-v"]
    proc = subprocess.run(
        ["bash", "-c", '"$@" | head -n 3; exit "${PIPESTATUS[0]}"', "bash", *argv],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.count("\n") == 3
    assert "Traceback" not in proc.stderr and "INTERNAL ERROR" not in proc.stderr
    assert project.scalar("SELECT status FROM ingestkit.batches") in ("finished", "interrupted")
    assert proc.returncode in (1, 2), proc.stderr


def test_fixtures_of_a_folder_outside_the_rootdir(project, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "conftest.py").write_text(
        "import ingestkit\n\n@ingestkit.fixture\ndef far():\n    'Far away.'\n"
    )
    (other / "ingest_far.py").write_text("def process_far(far):\n    pass\n")
    project.write("ingest_ok.py", ONE)
    result = project.run("--fixtures", str(other))
    assert result.exit_code == 0, out_of(result)
    assert re.search(r"^far -- .*elsewhere/conftest\.py:\d+$", result.output, re.M), result.output
    assert "    Far away." in result.output


# -- fixtures that misbehave ---------------------------------------------------------


def test_unknown_fixture_scope_is_a_collection_error(project):
    project.write("ingest_ok.py", ONE)
    project.write(
        "ingest_scope.py",
        """
import ingestkit

@ingestkit.fixture(scope="session")
def thing():
    return 1

def process_thing(thing):
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    assert "ERROR collecting ingest_scope.py" in result.output
    assert "unknown fixture scope 'session'; expected one of" in result.output
    assert result.statuses() == {"": "succeeded"}  # ingest_ok.py still ran


def test_generator_fixtures_that_yield_never_or_twice(project):
    project.write(
        "ingest_gen.py",
        """
import ingestkit

@ingestkit.fixture
def never():
    if False:
        yield 1

@ingestkit.fixture
def twice():
    yield 1
    yield 2

@ingestkit.source([{"id": 1}, {"id": 2}], key="id")
def process_never(record, never):
    pass

@ingestkit.source([{"id": 1}], key="id")
def process_twice(record, twice):
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    items = {(i["processor"].split("::")[1], i["key"]): i for i in result.items}
    for key in ("1", "2"):
        never = items[("process_never", key)]
        assert never["status"] == "error"
        assert never["error_message"] == "fixture 'never' did not yield a value (ingest_gen.py:4)"
    twice = items[("process_twice", "1")]
    assert twice["status"] == "error"
    assert twice["error_message"] == "fixture 'twice' yielded more than once (ingest_gen.py:9)"


def test_a_failing_batch_fixture_is_set_up_once_and_errors_every_user(project):
    project.write(
        "conftest.py",
        """
import ingestkit

CALLS = []

@ingestkit.fixture(scope="batch")
def api():
    CALLS.append(1)
    raise ConnectionError(f"api down (setup #{len(CALLS)})")
""",
    )
    project.write(
        "ingest_api.py",
        """
import ingestkit

@ingestkit.source([{"id": 1}, {"id": 2}], key="id")
def process_a(record, api):
    pass

def process_b(api):
    pass

def process_c():
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    by = {(i["processor"].split("::")[1], i["key"]): i for i in result.items}
    assert by[("process_c", "")]["status"] == "succeeded"
    for key in (("process_a", "1"), ("process_a", "2"), ("process_b", "")):
        assert by[key]["status"] == "error"
        assert by[key]["error_message"] == "api down (setup #1)"


def test_get_or_create_in_a_failing_wider_fixture_leaves_no_row_and_no_cached_id(project):
    project.query("CREATE TABLE dim (id serial PRIMARY KEY, code text UNIQUE)")
    project.write(
        "ingest_dim.py",
        """
import ingestkit

@ingestkit.fixture(scope="processor")
def prepared(lookup):
    lookup.get_or_create("dim", code="x")
    raise RuntimeError("preparation failed after creating a row")

def process_first(prepared):
    pass

def process_second(lookup, log):
    log.warning("cached=%s", lookup.get("dim", code="x"))
""",
    )
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    by = {i["processor"].split("::")[1]: i for i in result.items}
    assert by["process_first"]["status"] == "error"
    assert by["process_first"]["error_message"] == "preparation failed after creating a row"
    assert by["process_second"]["status"] == "succeeded"
    assert "cached=None" in by["process_second"]["log"]
    assert project.scalar("SELECT count(*) FROM dim") == 0


def test_a_failing_processor_fixture_does_not_undo_a_batch_fixture(project):
    project.write(
        "ingest_dim.py",
        """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS dim (id int PRIMARY KEY)")

@ingestkit.fixture(scope="processor")
def prepared():
    raise RuntimeError("preparation failed")

def process_first(prepared):
    pass

def process_second(db):
    db.execute("INSERT INTO dim VALUES (1)")
""",
    )
    result = project.run()
    by = {i["processor"].split("::")[1]: i for i in result.items}
    assert by["process_first"]["status"] == "error"
    assert by["process_second"]["status"] == "succeeded", by["process_second"]["error_message"]
    assert project.scalar("SELECT count(*) FROM dim") == 1


def test_files_pattern_given_as_a_string(project):
    project.write("ingestkit.toml", 'files = "load_*.py"\n')
    project.write("load_x.py", "def process_x():\n    pass\n")
    project.write("ingest_y.py", "def process_y():\n    pass\n")
    result = project.run()
    assert result.exit_code == 0, out_of(result)
    assert [i["processor"] for i in result.items] == ["load_x.py::process_x"]


# -- looking back: empty, unknown, ambiguous ---------------------------------------


def test_looking_back_at_an_empty_database_and_an_unknown_record(project):
    empty = project.run("--batches")
    assert empty.exit_code == 0, out_of(empty)
    assert empty.output.strip().splitlines()[-1] == "no batches yet"
    trace = project.run("--trace", "ingest_x.py::process_x[1]")
    assert trace.exit_code == 0, out_of(trace)
    assert "ingest_x.py::process_x[1]: no batch has touched this record" in trace.output


def test_ambiguous_batch_prefix_is_a_usage_error_and_passwords_stay_masked(project):
    import psycopg2.extensions

    project.write("ingest_ok.py", ONE)
    ids = []
    while len({i[0] for i in ids}) == len(ids):  # until two ids share a first digit
        ids.append(project.run().batch_id)
    first = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    params = psycopg2.extensions.parse_dsn(project.dsn)
    params["password"] = "lookback-secret"
    dsn = psycopg2.extensions.make_dsn(**params)
    proc = project.cli("--dsn", dsn, "--show", first, dsn=False)
    assert proc.returncode == 4, proc.stdout
    assert f"batch prefix {first!r} is ambiguous: give more of the id" in proc.stdout
    shown = project.cli("--dsn", dsn, "--batches", dsn=False)
    assert shown.returncode == 0, shown.stdout
    assert ids[-1][:8] in shown.stdout
    assert "lookback-secret" not in proc.stdout + shown.stdout


# -- readers: malformed JSON arrays and CSV layout -----------------------------------

JSON_READER = """
import ingestkit

@ingestkit.source(ingestkit.read_json("data.json"), key=None)
def process_json(record):
    pass
"""


@pytest.mark.parametrize(
    ("text", "expected", "messages"),
    [
        ("[]", {}, {}),
        (
            '[{"id": 1} {"id": 2}]',
            {"1": "succeeded", "#2": "error"},
            {"#2": "data.json, after record 1: expected ',' or ']', found '{'"},
        ),
        (
            '[{"id": 1}',
            {"1": "succeeded", "#2": "error"},
            {"#2": "data.json, after record 1: expected ',' or ']', found end of file"},
        ),
        (
            '[{"s": "a\\\\\\"b]", oops}, {"id": 2}, tru, nope, {"id": 5}]',
            {"#1": "error", "2": "succeeded", "#3": "error", "#4": "error", "5": "succeeded"},
            {"#1": "data.json, record 1: invalid JSON at character "},
        ),
        (
            '[{"id": 1}, tru]',
            {"1": "succeeded", "#2": "error"},
            {"#2": "data.json, record 2: invalid JSON at character 12"},
        ),
    ],
)
def test_read_json_resyncs_or_stops_with_a_clear_message(project, text, expected, messages):
    project.write("ingest_json.py", JSON_READER)
    project.write("data.json", text)
    result = project.run()
    assert result.statuses() == expected, out_of(result)
    assert result.exit_code == (1 if "error" in expected.values() else 0)
    for key, message in messages.items():
        assert result.by_key()[key]["error_message"].startswith(message)


def test_read_csv_skips_blank_lines_and_a_broken_header_is_one_error(project):
    project.write(
        "ingest_csv.py",
        """
import ingestkit

@ingestkit.source(ingestkit.read_csv("data.csv"), key="id")
def process_csv(record):
    pass
""",
    )
    project.write("data.csv", "\n\nid,name\n1,a\n\n2,b\n")
    result = project.run()
    assert result.exit_code == 0, out_of(result)
    assert result.statuses() == {"1": "succeeded", "2": "succeeded"}
    project.write("data.csv", '"id"x,name\n1,a\n2,b\n')
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    (item,) = result.items
    assert item["status"] == "error"
    assert item["error_message"].startswith("data.csv, line 1: ")


BROKEN_AFTER_EMPTY_KEY = """
import ingestkit

def rows():
    yield {"k": ""}
    raise OSError("the feed went away")

@ingestkit.source(rows, key=lambda r: r["k"])
def process_row(record):
    pass
"""


def test_first_load_whose_record_and_broken_source_share_key_empty(project):
    """A first load writes ingestkit.latest with plain inserts; the one key two
    outcomes of a batch can share (a record keyed "" and the source's own error)
    still takes the upsert. (A key function returning "" is now an error item at
    its position, so the source's error keeps key "" to itself.)"""
    project.write("ingest_x.py", BROKEN_AFTER_EMPTY_KEY)
    result = project.run()
    assert result.exit_code == 1, out_of(result)
    assert sorted((i["key"], i["status"]) for i in result.items) == [("", "error"), ("#1", "error")]
    latest = project.query("SELECT key, status FROM ingestkit.latest ORDER BY key")
    assert latest == [{"key": "", "status": "error"}, {"key": "#1", "status": "error"}]


AWKWARD_KEYS = """
import json
import pathlib
import ingestkit

HERE = pathlib.Path(__file__).parent

@ingestkit.source(lambda: json.loads((HERE / "data.json").read_text()), key="k")
def process_row(record):
    if record["v"] == "bad":
        raise ValueError("bad")
"""

#: keys that JSON, SQL and COPY each quote differently
KEYS = [
    "plain",
    "o'quote",
    'dq"uote',
    "back\\slash",
    "\\starts with a backslash",
    "tab\there",
    "new\nline",
    "ünïcødé ✓",
    "{a,b}",
    " ",
    "NULL",
    "\\N",
    "nul\x00inside",
]


def test_awkward_keys_are_found_again_unchanged_and_restored(project):
    """The history of a chunk's keys is read by one query that takes them as a JSON
    array: every key comes back, so an unchanged record is skipped, and one whose
    content went back to what succeeded is restored, whatever its key holds."""
    project.write("ingest_rows.py", AWKWARD_KEYS)

    def write(bad: str | None = None) -> None:
        rows = [{"k": k, "v": "bad" if k == bad else "ok"} for k in KEYS]
        project.write("data.json", json.dumps(rows))

    write()
    first = project.run()
    assert first.exit_code == 0, first.output
    again = project.run()
    assert again.exit_code == 0, again.output
    assert f"{len(KEYS)} unchanged" in again.output
    write(bad="ünïcødé ✓")
    failed = project.run()
    assert failed.exit_code == 1, failed.output
    assert f"{len(KEYS) - 1} unchanged" in failed.output
    write()  # back to what succeeded: restored, not run again
    restored = project.run()
    assert restored.exit_code == 0, restored.output
    assert f"{len(KEYS)} unchanged" in restored.output
    statuses = project.query("SELECT status, count(*) AS n FROM ingestkit.latest GROUP BY status")
    assert statuses == [{"status": "succeeded", "n": len(KEYS)}]
