"""Fixtures (SPEC §2): scopes, teardown, autouse, conftest.py hierarchy, built-ins, errors.

Fixture setup/teardown order is observed through an events file outside the
database (so rollbacks cannot hide it): pipelines are written with
``project.write_noted`` (conftest.py), which starts them with ``NOTE``,
whose ``note(...)`` appends one line to the file named by ``IK_EVENTS``.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter

BUILTINS = ("batch", "config", "db", "item", "log", "lookup", "record", "request")


def ok(result):
    """Message for failed assertions: the run's output and its non-successful items."""
    bad = [
        (i["processor"], i["key"], i["status"], i["error_message"])
        for i in result.items
        if i["status"] != "succeeded"
    ]
    return f"exit {result.exit_code}\n{result.output}\nnot succeeded: {bad}"


# -- scopes ------------------------------------------------------------------

SCOPE_CONFTEST = """
@ingestkit.fixture
def f_item(request):
    note("setup item", request.nodeid)
    yield
    note("teardown item", request.nodeid)


@ingestkit.fixture(scope="processor")
def f_proc(request):
    note("setup processor", request.nodeid)
    yield
    note("teardown processor", request.nodeid)


@ingestkit.fixture(scope="module")
def f_mod(request):
    note("setup module", request.nodeid)
    yield
    note("teardown module", request.nodeid)


@ingestkit.fixture(scope="batch")
def f_batch(request):
    note("setup batch")
    yield
    note("teardown batch")
"""

SCOPE_MODULE = """
@ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
def process_one(f_batch, f_mod, f_proc, f_item, record):
    note("call", record["id"])


@ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
def process_two(f_batch, f_mod, f_proc, f_item, record):
    note("call", record["id"])
"""


def test_each_scope_is_set_up_once_per_its_unit(project, events):
    project.write_noted("conftest.py", SCOPE_CONFTEST)
    project.write_noted("ingest_a.py", SCOPE_MODULE)
    project.write_noted("ingest_b.py", SCOPE_MODULE)
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert result.counts == {"succeeded": 12}

    lines = events()
    counts = Counter(" ".join(line.split()[:2]) for line in lines)
    assert counts == {
        "call 1": 4,
        "call 2": 4,
        "call 3": 4,
        "setup item": 12,
        "teardown item": 12,
        "setup processor": 4,
        "teardown processor": 4,
        "setup module": 2,
        "teardown module": 2,
        "setup batch": 1,
        "teardown batch": 1,
    }


def test_scopes_end_at_the_end_of_their_unit(project, events):
    project.write_noted("conftest.py", SCOPE_CONFTEST)
    project.write_noted("ingest_a.py", SCOPE_MODULE)
    project.write_noted("ingest_b.py", SCOPE_MODULE)
    result = project.run()
    assert result.exit_code == 0, ok(result)

    expected = ["setup batch"]
    for module in ("ingest_a.py", "ingest_b.py"):
        expected.append(f"setup module {module}")
        for proc in ("process_one", "process_two"):
            nodeid = f"{module}::{proc}"
            expected.append(f"setup processor {nodeid}")
            for key in (1, 2, 3):
                expected += [
                    f"setup item {nodeid}[{key}]",
                    f"call {key}",
                    f"teardown item {nodeid}[{key}]",
                ]
            expected.append(f"teardown processor {nodeid}")
        expected.append(f"teardown module {module}")
    expected.append("teardown batch")
    assert events() == expected


def test_wider_scopes_are_set_up_first_whatever_the_argument_order(project, events):
    # pytest: "higher-scoped fixtures are instantiated first", independent of argument order
    project.write_noted("conftest.py", SCOPE_CONFTEST)
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.source([{"id": 1}], key="id")
        def process_one(f_item, f_proc, f_mod, f_batch):
            note("call")
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert [line.split()[1] for line in events() if line.startswith("setup")] == [
        "batch",
        "module",
        "processor",
        "item",
    ]


# -- teardown order, autouse, fixtures requesting fixtures ---------------------


def test_teardown_runs_in_reverse_setup_order(project, events):
    project.write_noted(
        "ingest_chain.py",
        """
        @ingestkit.fixture(autouse=True)
        def au():
            note("setup au")
            yield
            note("teardown au")


        @ingestkit.fixture
        def a():
            note("setup a")
            yield "a"
            note("teardown a")


        @ingestkit.fixture
        def b(a):
            note("setup b")
            yield a + "b"
            note("teardown b")


        @ingestkit.fixture
        def c(b):
            note("setup c")
            yield b + "c"
            note("teardown c")


        @ingestkit.fixture
        def d():
            note("setup d")
            yield "d"
            note("teardown d")


        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_chain(c, d, record):
            note("call", record["id"], c, d)
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    one_item = [
        "setup au", "setup a", "setup b", "setup c", "setup d",
        "call {} abc d",
        "teardown d", "teardown c", "teardown b", "teardown a", "teardown au",
    ]  # fmt: skip
    assert events() == [e.format(1) for e in one_item] + [e.format(2) for e in one_item]


def test_autouse_fixtures_run_for_every_processor_they_are_visible_to(project, events):
    project.write_noted(
        "conftest.py",
        """
        @ingestkit.fixture(autouse=True)
        def everywhere(item):
            note("everywhere", item.nodeid)


        @ingestkit.fixture(scope="batch", autouse=True)
        def create_table(db):
            note("create_table")
            db.execute("CREATE TABLE auto_made (id int)")


        @ingestkit.fixture(scope="module", autouse=True)
        def each_module(request):
            note("each_module", request.nodeid)
        """,
    )
    project.write_noted(
        "sub/conftest.py",
        """
        @ingestkit.fixture(autouse=True)
        def sub_only(item):
            note("sub_only", item.nodeid)
        """,
    )
    project.write_noted("sub/ingest_c.py", "def process_c():\n    pass\n")
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(scope="module", autouse=True)
        def only_here():
            note("only_here")


        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_a(record, db):
            db.insert("auto_made", {"id": record["id"]})
        """,
    )
    project.write_noted(
        "ingest_b.py",
        """
        def process_b(db):
            db.insert("auto_made", {"id": 100})
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert events() == [
        "create_table",
        "each_module ingest_a.py",
        "only_here",
        "everywhere ingest_a.py::process_a[1]",
        "everywhere ingest_a.py::process_a[2]",
        "each_module ingest_b.py",
        "everywhere ingest_b.py::process_b[]",
        "each_module sub/ingest_c.py",
        "everywhere sub/ingest_c.py::process_c[]",
        "sub_only sub/ingest_c.py::process_c[]",
    ]
    assert sorted(r["id"] for r in project.query("SELECT id FROM auto_made")) == [1, 2, 100]


def test_outer_autouse_fixtures_run_before_inner_ones_of_the_same_scope(project, events):
    project.write_noted(
        "conftest.py",
        """
        @ingestkit.fixture(autouse=True)
        def zz_outer():
            note("zz_outer")
        """,
    )
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(autouse=True)
        def aa_inner():
            note("aa_inner")


        def process_a():
            note("call")
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert events() == ["zz_outer", "aa_inner", "call"]


def test_fixtures_receive_the_values_of_the_fixtures_they_request(project):
    project.query("CREATE TABLE out (k text, v text)")
    project.write(
        "ingest_values.py",
        """
        import ingestkit


        @ingestkit.fixture(scope="batch")
        def prefix():
            return "pre"


        @ingestkit.fixture(scope="processor")
        def label(prefix):
            return prefix + "-label"


        @ingestkit.fixture(name="renamed")
        def _some_function_name(label, record):
            return f"{label}-{record['id']}"


        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_values(record, renamed, db):
            db.insert("out", {"k": str(record["id"]), "v": renamed})
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    rows = project.query("SELECT k, v FROM out ORDER BY k")
    assert rows == [{"k": "1", "v": "pre-label-1"}, {"k": "2", "v": "pre-label-2"}]


# -- conftest.py hierarchy -----------------------------------------------------


def test_conftest_hierarchy_nearest_definition_wins_and_may_extend_outer(project):
    project.query("CREATE TABLE seen (proc text, name text, value text)")
    project.write(
        "conftest.py",
        """
        import ingestkit


        @ingestkit.fixture
        def flavour():
            return "root"


        @ingestkit.fixture
        def colour():
            return "root-colour"


        @ingestkit.fixture(scope="batch")
        def size():
            return "root-size"
        """,
    )
    project.write(
        "pipelines/conftest.py",
        """
        import ingestkit


        @ingestkit.fixture
        def flavour(flavour):
            return flavour + ">pipelines"


        @ingestkit.fixture
        def colour():
            return "pipelines-colour"
        """,
    )
    project.write(
        "pipelines/deeper/conftest.py",
        """
        import ingestkit


        @ingestkit.fixture
        def flavour(flavour):
            return flavour + ">deeper"
        """,
    )
    project.write(
        "other/conftest.py",
        """
        import ingestkit


        @ingestkit.fixture
        def colour():
            return "other-colour"
        """,
    )
    body = textwrap.dedent(
        """
        import ingestkit


        def process_{name}(db, flavour, colour, size):
            for k, v in (("flavour", flavour), ("colour", colour), ("size", size)):
                db.insert("seen", {{"proc": "{name}", "name": k, "value": v}})
        """
    )
    project.write("ingest_top.py", body.format(name="top"))
    project.write("pipelines/ingest_mid.py", body.format(name="mid"))
    project.write("pipelines/deeper/ingest_deep.py", body.format(name="deep"))
    project.write("other/ingest_other.py", body.format(name="other"))
    # a module's own definition is nearer than every conftest.py, and may extend it too
    project.write(
        "pipelines/ingest_own.py",
        body.format(name="own")
        + textwrap.dedent(
            """

            @ingestkit.fixture
            def colour(colour):
                return colour + ">module"
            """
        ),
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    seen = {(r["proc"], r["name"]): r["value"] for r in project.query("SELECT * FROM seen")}
    assert seen == {
        ("top", "flavour"): "root",
        ("top", "colour"): "root-colour",
        ("top", "size"): "root-size",
        ("mid", "flavour"): "root>pipelines",
        ("mid", "colour"): "pipelines-colour",
        ("mid", "size"): "root-size",
        ("deep", "flavour"): "root>pipelines>deeper",
        ("deep", "colour"): "pipelines-colour",
        ("deep", "size"): "root-size",
        ("other", "flavour"): "root",
        ("other", "colour"): "other-colour",
        ("other", "size"): "root-size",
        ("own", "flavour"): "root>pipelines",
        ("own", "colour"): "pipelines-colour>module",
        ("own", "size"): "root-size",
    }


def test_conftest_above_rootdir_is_not_loaded(project, tmp_path):
    assert project.root.parent == tmp_path
    (tmp_path / "conftest.py").write_text(
        "import ingestkit\n\n\n@ingestkit.fixture\ndef outside():\n    return 1\n"
    )
    project.write("ingest_a.py", "def process_a(outside):\n    pass\n")
    result = project.run()
    assert result.exit_code == 1, ok(result)
    assert result.statuses() == {"": "error"}
    assert result.items[0]["error_message"].startswith("fixture 'outside' not found")


def test_sibling_conftest_fixtures_are_not_visible(project):
    project.write(
        "a/conftest.py",
        """
        import ingestkit


        @ingestkit.fixture
        def only_in_a():
            return 1
        """,
    )
    project.write("a/ingest_a.py", "def process_a(only_in_a):\n    pass\n")
    project.write("b/ingest_b.py", "def process_b(only_in_a):\n    pass\n")
    result = project.run()
    assert result.exit_code == 1, ok(result)
    assert {i["processor"]: i["status"] for i in result.items} == {
        "a/ingest_a.py::process_a": "succeeded",
        "b/ingest_b.py::process_b": "error",
    }


# -- built-in fixtures ---------------------------------------------------------


def test_record_is_the_record_as_the_source_yielded_it(project, events):
    project.write_noted(
        "ingest_rec.py",
        """
        RECORDS = [{"id": 1, "nested": {"a": [1, 2]}, "none": None}, {"id": 2, "nested": {}}]


        @ingestkit.source(RECORDS, key="id")
        def process_rec(record):
            assert record is RECORDS[record["id"] - 1]
            note(repr(record))
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert events() == [
        "{'id': 1, 'nested': {'a': [1, 2]}, 'none': None}",
        "{'id': 2, 'nested': {}}",
    ]


def test_item_fixture_key_nodeid_attempt_previous_error(project, events):
    project.write_noted(
        "ingest_item.py",
        """
        @ingestkit.source([{"id": "a"}, {"id": "b"}], key="id")
        def process_item(item, record):
            note(item.key, item.nodeid, item.attempt, item.previous_error)
            if record["id"] == "b" and item.attempt < 3:
                raise ValueError(f"try {item.attempt} fails")
        """,
    )
    first = project.run()
    assert first.exit_code == 1, ok(first)
    second = project.run()
    assert second.exit_code == 1, ok(second)
    third = project.run()
    assert third.exit_code == 0, ok(third)
    assert events() == [
        "a ingest_item.py::process_item[a] 1 None",
        "b ingest_item.py::process_item[b] 1 None",
        "b ingest_item.py::process_item[b] 2 try 1 fails",
        "b ingest_item.py::process_item[b] 3 try 2 fails",
    ]
    assert third.by_key()["b"]["attempt"] == 3
    assert third.counts == {"succeeded": 1, "unchanged": 1}


def test_db_fixture_api(project):
    project.write(
        "ingest_db.py",
        """
        import psycopg2.extensions

        import ingestkit


        @ingestkit.fixture(scope="batch", autouse=True)
        def schema(db):
            db.execute("CREATE TABLE kv (k text PRIMARY KEY, v int)")


        def process_api(db):
            assert isinstance(db.connection, psycopg2.extensions.connection)
            db.insert("kv", {"k": "a", "v": 1})
            db.insert("kv", [{"k": "b", "v": 2}, {"k": "c", "v": 3}])
            db.upsert("kv", {"k": "a", "v": 10}, conflict=("k",))
            db.upsert("kv", {"k": "d", "v": 4}, conflict=("k",))
            db.execute("UPDATE kv SET v = v + %s WHERE k = %s", (100, "c"))
            rows = db.query("SELECT k, v FROM kv WHERE v > %s ORDER BY k", (1,))
            assert rows == [
                {"k": "a", "v": 10}, {"k": "b", "v": 2}, {"k": "c", "v": 103}, {"k": "d", "v": 4}
            ], rows
            assert db.query_one("SELECT v FROM kv WHERE k = %s", ("b",)) == {"v": 2}
            assert db.query_one("SELECT v FROM kv WHERE k = %s", ("zz",)) is None
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    rows = project.query("SELECT k, v FROM kv ORDER BY k")
    assert [(r["k"], r["v"]) for r in rows] == [("a", 10), ("b", 2), ("c", 103), ("d", 4)]


def test_db_writes_of_a_failing_item_are_rolled_back_neighbours_kept(project):
    project.query("CREATE TABLE t (id int)")
    project.write(
        "ingest_t.py",
        """
        import ingestkit


        @ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
        def process_t(record, db):
            db.insert("t", {"id": record["id"]})
            if record["id"] == 2:
                raise RuntimeError("no 2")
        """,
    )
    result = project.run()
    assert result.statuses() == {"1": "succeeded", "2": "failed", "3": "succeeded"}
    assert sorted(r["id"] for r in project.query("SELECT id FROM t")) == [1, 3]


LOOKUP_TABLES = """
CREATE TABLE countries (id int PRIMARY KEY, code text UNIQUE, name text);
INSERT INTO countries VALUES (1, 'DE', 'Germany'), (2, 'FR', 'France');
CREATE TABLE "order" (id serial PRIMARY KEY, "select" text);
INSERT INTO "order" ("select") VALUES ('x');
"""


def test_lookup_call_get_preload_and_get_or_create(project):
    project.query(LOOKUP_TABLES)
    project.write(
        "ingest_lookup.py",
        """
        import ingestkit


        def process_lookup(lookup):
            assert lookup("countries", code="DE") == 1
            assert lookup("countries", returning="name", code="FR") == "France"
            assert lookup("countries", code="FR", name="France") == 2
            assert lookup.get("countries", code="XX") is None
            assert lookup("order", select="x") == 1  # identifiers are quoted
            try:
                lookup("countries", code="XX")
            except ingestkit.LookupMissing as exc:
                assert isinstance(exc, LookupError)
            else:
                raise AssertionError("no LookupMissing")
            assert lookup.preload("countries", "code") == 2
            assert lookup("countries", code="FR") == 2
            assert lookup.get("countries", code="XX") is None
            new = lookup.get_or_create("countries", code="IT", defaults={"id": 3, "name": "Italy"})
            assert new == 3
            assert lookup.get_or_create("countries", code="IT", defaults={"id": 99}) == 3
            assert lookup("countries", code="IT") == 3
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    rows = project.query("SELECT id, code, name FROM countries ORDER BY id")
    assert rows[-1] == {"id": 3, "code": "IT", "name": "Italy"}
    assert len(rows) == 3


def test_lookup_missing_fails_the_item_naming_table_and_match(project):
    project.query(LOOKUP_TABLES)
    project.write(
        "ingest_lookup.py",
        """
        import ingestkit


        @ingestkit.source([{"c": "DE"}, {"c": "ZZ"}, {"c": "FR"}], key="c")
        def process_lookup(record, lookup):
            lookup("countries", code=record["c"])
        """,
    )
    result = project.run()
    assert result.exit_code == 1, ok(result)
    assert result.statuses() == {"DE": "succeeded", "ZZ": "failed", "FR": "succeeded"}
    bad = result.by_key()["ZZ"]
    assert bad["error_type"] == "LookupMissing"
    assert "countries" in bad["error_message"]
    assert "code" in bad["error_message"] and "ZZ" in bad["error_message"]


def test_lookup_get_or_create_row_and_cache_are_gone_when_the_item_fails(project):
    project.query(
        "CREATE TABLE tags (id serial PRIMARY KEY, name text UNIQUE);"
        "CREATE TABLE tagged (id int, tag_id int REFERENCES tags (id));"
    )
    project.write(
        "ingest_tags.py",
        """
        import ingestkit


        RECORDS = [{"id": 1, "tag": "new", "fail": True}, {"id": 2, "tag": "new", "fail": False}]


        @ingestkit.source(RECORDS, key="id")
        def process_tag(record, lookup, db):
            tag_id = lookup.get_or_create("tags", name=record["tag"])
            if record["fail"]:
                raise ValueError("after creating the tag")
            db.insert("tagged", {"id": record["id"], "tag_id": tag_id})
        """,
    )
    result = project.run()
    assert result.statuses() == {"1": "failed", "2": "succeeded"}, ok(result)
    tags = project.query("SELECT id, name FROM tags")
    assert [t["name"] for t in tags] == ["new"]
    tagged = project.query("SELECT id, tag_id FROM tagged")
    assert tagged == [{"id": 2, "tag_id": tags[0]["id"]}]


def test_batch_fixture_id_started_at_meta_dry_run(project, events):
    project.write_noted(
        "ingest_batch.py",
        """
        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_batch(record, batch):
            note(type(batch.id).__name__, batch.id, type(batch.started_at).__name__, batch.dry_run)
            batch.meta.setdefault("seen", []).append(record["id"])
            batch.meta["source"] = "drop-2024.csv"
        """,
    )
    dry = project.run("--dry-run")
    assert dry.exit_code == 0, ok(dry)
    result = project.run()  # the dry run ingested nothing: every item runs again
    assert result.exit_code == 0, ok(result)
    assert result.counts == {"succeeded": 2}
    lines = events()
    assert len(lines) == 4 and lines[0] == lines[1] and lines[2] == lines[3], lines
    assert lines[0].split()[1] == dry.batch_id and lines[0].split()[-1] == "True"
    kind, batch_id, started_type, dry_run = lines[2].split()
    assert kind == "UUID" and batch_id == result.batch_id != dry.batch_id
    assert started_type == "datetime"
    assert dry_run == "False"
    meta = project.scalar("SELECT meta FROM ingestkit.batches WHERE id = %s", (batch_id,))
    assert meta["seen"] == [1, 2] and meta["source"] == "drop-2024.csv"


def test_log_fixture_is_stored_with_the_item(project):
    project.write(
        "ingest_log.py",
        """
        import logging

        import ingestkit


        @ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
        def process_log(record, log):
            assert isinstance(log, logging.Logger)
            log.info("hello %s", record["id"])
            if record["id"] == 2:
                log.warning("about to fail")
                raise ValueError("two")
            if record["id"] == 3:
                logging.getLogger("some.library").warning("library says hi")
        """,
    )
    result = project.run()
    items = result.by_key()
    assert items["2"]["status"] == "failed", ok(result)
    assert "hello 1" in items["1"]["log"]
    assert "hello 2" not in items["1"]["log"]
    assert "hello 2" in items["2"]["log"] and "about to fail" in items["2"]["log"]
    assert "library says hi" in items["3"]["log"]


def test_request_fixture(project, events):
    project.write_noted(
        "ingest_req.py",
        """
        @ingestkit.fixture(scope="processor")
        def pfix(request):
            note("pfix", request.fixturename, request.scope, request.nodeid)
            request.addfinalizer(lambda: note("pfix finalizer"))
            return "P"


        @ingestkit.fixture
        def ifix(request):
            note("ifix", request.fixturename, request.scope, request.nodeid)
            note("ifix config", request.config.getini("functions"))
            request.addfinalizer(lambda: note("ifix finalizer", request.nodeid))
            return "I"


        @ingestkit.fixture
        def lazy():
            note("lazy setup")
            return "L"


        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_req(record, ifix, pfix, request):
            note("call", record["id"], ifix, pfix, request.getfixturevalue("lazy"))
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    node = "ingest_req.py::process_req"
    per_item = [
        "ifix ifix item {node}[{k}]",
        "ifix config ['process_*']",
        "lazy setup",
        "call {k} I P L",
        "ifix finalizer {node}[{k}]",
    ]
    assert events() == [
        f"pfix pfix processor {node}",
        *[line.format(node=node, k=1) for line in per_item],
        *[line.format(node=node, k=2) for line in per_item],
        "pfix finalizer",
    ]


def test_config_fixture(project, events):
    project.write_noted(
        "ingest_cfg.py",
        """
        def process_cfg(config):
            note(config.getoption("reprocess"), config.getoption("keyword"), config.getini("files"))
        """,
    )
    result = project.run("--reprocess", "-k", "cfg")
    assert result.exit_code == 0, ok(result)
    assert events() == ["True cfg ['ingest_*.py']"]


# -- errors ----------------------------------------------------------------------


def test_unknown_fixture_errors_its_processor_only(project):
    project.write(
        "conftest.py",
        """
        import ingestkit


        @ingestkit.fixture
        def zebra():
            return 1


        @ingestkit.fixture(scope="batch")
        def apple():
            return 2
        """,
    )
    project.write(
        "ingest_a.py",
        """
        import ingestkit


        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_bad(record, no_such_thing):
            pass


        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_good(record, zebra, apple):
            pass
        """,
    )
    project.write("ingest_b.py", "def process_later():\n    pass\n")
    result = project.run()
    assert result.exit_code == 1, ok(result)
    outcome = {(i["processor"], i["key"]): i for i in result.items}
    assert {k: v["status"] for k, v in outcome.items()} == {
        ("ingest_a.py::process_bad", "1"): "error",
        ("ingest_a.py::process_bad", "2"): "error",
        ("ingest_a.py::process_good", "1"): "succeeded",
        ("ingest_a.py::process_good", "2"): "succeeded",
        ("ingest_b.py::process_later", ""): "succeeded",
    }
    message = outcome[("ingest_a.py::process_bad", "1")]["error_message"]
    assert message.startswith("fixture 'no_such_thing' not found"), message
    rest = message.split("\n", 1)[1]
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest.split("\n")[0].split(":", 1)[-1])
    assert names == sorted(names)
    assert set(BUILTINS) | {"apple", "zebra"} <= set(names), names
    assert "no_such_thing" not in names


def test_scope_mismatch_names_both_fixtures(project):
    project.write(
        "ingest_scope.py",
        """
        import ingestkit


        @ingestkit.fixture(scope="batch")
        def whole_run(record):
            return record


        @ingestkit.fixture(scope="processor")
        def per_processor(per_item):
            return per_item


        @ingestkit.fixture
        def per_item():
            return 1


        @ingestkit.source([{"id": 1}], key="id")
        def process_a(whole_run):
            pass


        @ingestkit.source([{"id": 1}], key="id")
        def process_b(per_processor):
            pass


        @ingestkit.source([{"id": 1}], key="id")
        def process_c(per_item):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1, ok(result)
    by_proc = {i["processor"].split("::")[1]: i for i in result.items}
    assert by_proc["process_c"]["status"] == "succeeded"
    for proc, wide, narrow in (
        ("process_a", "whole_run", "record"),
        ("process_b", "per_processor", "per_item"),
    ):
        assert by_proc[proc]["status"] == "error"
        message = by_proc[proc]["error_message"]
        assert f"'{wide}'" in message and f"'{narrow}'" in message, message


def test_fixture_setup_raising_is_an_error_and_the_processor_never_runs(project, events):
    project.write_noted(
        "ingest_setup.py",
        """
        @ingestkit.fixture
        def picky(record):
            if record["id"] == 2:
                raise KeyError("no fixture for two")
            return record["id"]


        @ingestkit.fixture(scope="processor")
        def broken():
            raise RuntimeError("processor fixture broke")


        @ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
        def process_picky(picky):
            note("picky", picky)


        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_broken(broken):
            note("broken ran")
        """,
    )
    result = project.run()
    assert result.exit_code == 1, ok(result)
    outcome = {(i["processor"].split("::")[1], i["key"]): i for i in result.items}
    assert {k: v["status"] for k, v in outcome.items()} == {
        ("process_picky", "1"): "succeeded",
        ("process_picky", "2"): "error",
        ("process_picky", "3"): "succeeded",
        ("process_broken", "1"): "error",
        ("process_broken", "2"): "error",
    }
    assert "no fixture for two" in outcome[("process_picky", "2")]["error_message"]
    assert outcome[("process_picky", "2")]["error_type"] == "KeyError"
    assert "processor fixture broke" in outcome[("process_broken", "1")]["error_message"]
    assert events() == ["picky 1", "picky 3"]


def test_item_fixture_teardown_raising_is_an_error(project, events):
    project.query("CREATE TABLE t (id int)")
    project.write_noted(
        "ingest_td.py",
        """
        @ingestkit.fixture
        def grumpy(record):
            yield
            note("teardown", record["id"])
            if record["id"] == 2:
                raise RuntimeError("teardown failed for two")


        @ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
        def process_td(record, grumpy, db):
            db.insert("t", {"id": record["id"]})
        """,
    )
    result = project.run()
    assert result.exit_code == 1, ok(result)
    assert result.statuses() == {"1": "succeeded", "2": "error", "3": "succeeded"}
    assert "teardown failed for two" in result.by_key()["2"]["error_message"]
    assert events() == ["teardown 1", "teardown 2", "teardown 3"]
    assert sorted(r["id"] for r in project.query("SELECT id FROM t")) == [1, 3]


def test_sys_exit_among_several_failing_teardowns_is_an_error_of_the_item(project):
    # SystemExit is no Exception: the group of teardown errors once refused to
    # hold it, and the run ended in an INTERNAL ERROR with nothing recorded
    project.query("CREATE TABLE t (id int)")
    project.write(
        "ingest_td.py",
        """
        import sys

        import ingestkit


        @ingestkit.fixture
        def first():
            yield
            raise ValueError("first broke")


        @ingestkit.fixture
        def second(record):
            yield
            if record["id"] == 2:
                sys.exit(3)


        @ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
        def process_td(record, first, second, db):
            db.insert("t", {"id": record["id"]})
        """,
    )
    result = project.run()
    assert result.exit_code == 1, ok(result)
    assert "INTERNAL ERROR" not in result.output
    assert result.statuses() == {"1": "error", "2": "error", "3": "error"}
    two = result.by_key()["2"]
    assert two["error_type"] == "TeardownErrors"
    assert two["error_message"] == (
        "2 errors while tearing down fixtures: SystemExit: 3; ValueError: first broke"
    )
    assert result.by_key()["1"]["error_message"] == "first broke"
    assert project.query("SELECT id FROM t") == []


def test_wider_fixture_teardown_raising_is_reported_and_fails_the_batch(project):
    project.write(
        "ingest_td.py",
        """
        import ingestkit


        @ingestkit.fixture(scope="processor")
        def conn():
            yield
            raise RuntimeError("processor teardown broke")


        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_td(conn):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1, ok(result)
    assert result.statuses() == {"1": "succeeded", "2": "succeeded"}
    assert "processor teardown broke" in result.output


def test_scope_mismatch_through_getfixturevalue_names_both_fixtures(project):
    project.write(
        "ingest_gfv.py",
        """
        import ingestkit


        @ingestkit.fixture(scope="batch")
        def whole_run(request):
            return request.getfixturevalue("record")


        @ingestkit.source([{"id": 1}], key="id")
        def process_a(whole_run):
            pass
        """,
    )
    result = project.run()
    assert result.statuses() == {"1": "error"}, ok(result)
    message = result.items[0]["error_message"]
    assert "'whole_run'" in message and "'record'" in message, message


def test_fixture_dependency_cycle_is_an_error_naming_the_fixtures(project):
    project.write(
        "ingest_cycle.py",
        """
        import ingestkit


        @ingestkit.fixture
        def chicken(egg):
            return 1


        @ingestkit.fixture
        def egg(chicken):
            return 2


        @ingestkit.source([{"id": 1}], key="id")
        def process_a(chicken):
            pass
        """,
    )
    result = project.run()
    assert result.statuses() == {"1": "error"}, ok(result)
    message = result.items[0]["error_message"]
    assert "'chicken'" in message or "'egg'" in message, message


# -- ingestkit --fixtures ------------------------------------------------------------


def test_fixtures_option_lists_builtins_and_conftest_fixtures(project):
    project.write(
        "conftest.py",
        '''
        import ingestkit


        @ingestkit.fixture(scope="batch")
        def warehouse():
            """The warehouse connection.

            More details that are not shown.
            """
        ''',
    )
    project.write(
        "pipelines/conftest.py",
        '''
        import ingestkit


        @ingestkit.fixture
        def region():
            """Region code of the record."""
        ''',
    )
    project.write("pipelines/ingest_x.py", "def process_x(region, warehouse):\n    pass\n")
    result = project.run("--fixtures", "pipelines")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()

    def entry(name: str) -> tuple[str, str]:
        for i, line in enumerate(lines):
            if re.match(rf"{name}\b", line):
                return line, lines[i + 1] if i + 1 < len(lines) else ""
        raise AssertionError(f"{name} not listed:\n{result.output}")

    for name in BUILTINS:
        entry(name)
    line, doc = entry("warehouse")
    assert re.search(r"(?<![/\w])conftest\.py:(4|5)\b", line), line
    assert doc.strip() == "The warehouse connection."
    assert "More details" not in result.output
    line, doc = entry("region")
    assert re.search(r"pipelines/conftest\.py:(4|5)\b", line), line
    assert doc.strip() == "Region code of the record."


def test_fixtures_option_lists_conftest_fixtures_of_a_folder_without_processors(project):
    project.write(
        "pipelines/conftest.py",
        '''
        import ingestkit


        @ingestkit.fixture
        def region():
            """Region code of the record."""
        ''',
    )
    project.write("pipelines/ingest_x.py", "# processors come later\n")
    result = project.run("--fixtures", "pipelines")
    assert re.search(r"^region\b.*pipelines/conftest\.py:\d+", result.output, re.M), result.output


# -- sources with injected fixtures --------------------------------------------------


def test_callable_source_receives_fixtures_and_reads_a_staging_table(project):
    project.query(
        "CREATE TABLE staging (id int, name text);"
        "INSERT INTO staging VALUES (3, 'c'), (1, 'a'), (2, 'b');"
        "CREATE TABLE target (id int, name text, via text);"
    )
    project.write(
        "conftest.py",
        """
        import ingestkit


        @ingestkit.fixture(scope="batch")
        def min_id():
            return 2
        """,
    )
    project.write(
        "ingest_staging.py",
        """
        import ingestkit


        @ingestkit.source(lambda db: db.query("SELECT id, name FROM staging ORDER BY id"), key="id")
        def process_all(record, db):
            db.insert("target", {"id": record["id"], "name": record["name"], "via": "lambda"})


        def pending(db, min_id):
            return db.query("SELECT id, name FROM staging WHERE id >= %s ORDER BY id", (min_id,))


        @ingestkit.source(pending, key="id")
        def process_pending(record, db):
            db.insert("target", {"id": record["id"], "name": record["name"], "via": "def"})
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    keys = {(i["processor"].split("::")[1], i["key"]) for i in result.items}
    assert keys == {
        ("process_all", "1"),
        ("process_all", "2"),
        ("process_all", "3"),
        ("process_pending", "2"),
        ("process_pending", "3"),
    }
    rows = project.query("SELECT via, id, name FROM target ORDER BY via, id")
    assert [(r["via"], r["id"], r["name"]) for r in rows] == [
        ("def", 2, "b"),
        ("def", 3, "c"),
        ("lambda", 1, "a"),
        ("lambda", 2, "b"),
        ("lambda", 3, "c"),
    ]


def test_source_and_processor_share_a_processor_fixture_and_record_can_be_overridden(
    project, events
):
    project.write_noted(
        "conftest.py",
        """
        @ingestkit.fixture
        def record(record):
            return {**record, "normalized": True}


        @ingestkit.fixture(scope="processor")
        def limit():
            note("limit setup")
            yield 3
            note("limit teardown")
        """,
    )
    project.write_noted(
        "ingest_x.py",
        """
        def rows(limit):
            return [{"id": i} for i in range(limit)]


        @ingestkit.source(rows, key="id")
        def process_x(record, limit):
            note(sorted(record.items()), limit)
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert events() == [
        "limit setup",
        *[f"[('id', {i}), ('normalized', True)] 3" for i in range(3)],
        "limit teardown",
    ]
