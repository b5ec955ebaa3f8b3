"""Collection (SPEC §1, §4): patterns, rootdir and node ids, selection, errors, order.

Processors note what ran to an events file outside the database (``IK_EVENTS``),
so that "nothing ran" and run order can be observed without ingestkit's tables.
"""

from __future__ import annotations

import re

import pytest

THREE = """
@ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
def process_NAME(record, item):
    note(item.nodeid)
"""


def three(name: str) -> str:
    """A processor ``process_<name>`` over three records that notes each item's node id."""
    return THREE.replace("NAME", name)


def processors(result) -> set[str]:
    return {i["processor"] for i in result.items}


def listed(result) -> list[str]:
    """Node ids that ``--collect-only`` printed, in order."""
    return re.findall(r"^(\S+\.py::\w+)", result.output, flags=re.M)


def batch_count(project) -> int:
    if project.scalar("SELECT to_regclass('ingestkit.batches') IS NULL"):
        return 0
    return project.scalar("SELECT count(*) FROM ingestkit.batches")


def info(result) -> str:
    return f"exit {result.exit_code}\n{result.output}"


# -- patterns ------------------------------------------------------------------------


def test_default_patterns(project, events):
    project.write_noted(
        "ingest_orders.py",
        """
        def process_one():
            note("one")


        def process_two():
            note("two")


        def helper_process():
            note("helper_process")


        def _process_private():
            note("_process_private")


        process_constant = 3


        class process_klass:
            pass
        """,
    )
    project.write_noted(
        "sub/deeper/ingest_nested.py", "def process_nested():\n    note('nested')\n"
    )
    project.write_noted("helpers.py", "def process_helper():\n    note('helper')\n")
    project.write_noted("test_ingest.py", "def process_test():\n    note('test')\n")
    project.write_noted("ingest_notes.txt", "def process_txt():\n    note('txt')\n")
    project.write_noted("my_ingest_x.py", "def process_my():\n    note('my')\n")
    result = project.run()
    assert result.exit_code == 0, info(result)
    assert processors(result) == {
        "ingest_orders.py::process_one",
        "ingest_orders.py::process_two",
        "sub/deeper/ingest_nested.py::process_nested",
    }
    assert events() == ["one", "two", "nested"]


def test_custom_patterns_from_pyproject(project, events):
    (project.root / "ingestkit.toml").unlink()
    project.write(
        "pyproject.toml",
        """
        [project]
        name = "whatever"

        [tool.ingestkit]
        files = ["load_*.py", "*_feed.py"]
        functions = ["handle_*", "on_*"]
        """,
    )
    project.write_noted(
        "load_orders.py",
        """
        def handle_order():
            note("handle_order")


        def on_refund():
            note("on_refund")


        def process_ignored():
            note("process_ignored")
        """,
    )
    project.write_noted("pipelines/news_feed.py", "def handle_news():\n    note('handle_news')\n")
    project.write_noted("ingest_default.py", "def handle_default():\n    note('default')\n")
    result = project.run()
    assert result.exit_code == 0, info(result)
    assert processors(result) == {
        "load_orders.py::handle_order",
        "load_orders.py::on_refund",
        "pipelines/news_feed.py::handle_news",
    }
    assert events() == ["handle_order", "on_refund", "handle_news"]


def test_paths_from_config(project, events):
    (project.root / "ingestkit.toml").unlink()
    project.write("pyproject.toml", '[tool.ingestkit]\npaths = ["pipelines", "more/feeds"]\n')
    project.write_noted("ingest_root.py", "def process_root():\n    note('root')\n")
    project.write_noted("pipelines/ingest_a.py", "def process_a():\n    note('a')\n")
    project.write_noted("more/feeds/ingest_b.py", "def process_b():\n    note('b')\n")
    project.write_noted("more/ingest_c.py", "def process_c():\n    note('c')\n")
    result = project.run()
    assert result.exit_code == 0, info(result)
    assert processors(result) == {
        "pipelines/ingest_a.py::process_a",
        "more/feeds/ingest_b.py::process_b",
    }
    assert sorted(events()) == ["a", "b"]
    # paths on the command line replace the configured ones
    explicit = project.run("ingest_root.py")
    assert processors(explicit) == {"ingest_root.py::process_root"}, info(explicit)


# -- rootdir and node ids ---------------------------------------------------------


def test_nodeids_do_not_depend_on_where_ingestkit_is_invoked(project, events):
    project.write_noted("pipelines/ingest_x.py", three("x"))
    project.write("pipelines/pyproject.toml", "[tool.black]\nline-length = 100\n")
    from_root = project.run("pipelines")
    assert from_root.exit_code == 0, info(from_root)
    assert processors(from_root) == {"pipelines/ingest_x.py::process_x"}

    nodes = [f"pipelines/ingest_x.py::process_x[{k}]" for k in (1, 2, 3)]
    assert events() == nodes

    inside = project.run(".", cwd=project.root / "pipelines")
    assert inside.exit_code == 0, info(inside)
    # the same identity means the same "already ingested" state
    assert inside.counts == {"unchanged": 3}, info(inside)
    again = project.run(".", "--reprocess", cwd=project.root / "pipelines")
    assert processors(again) == {"pipelines/ingest_x.py::process_x"}, info(again)
    assert events() == nodes + nodes

    by_file = project.run("pipelines/ingest_x.py", "--reprocess")
    assert processors(by_file) == {"pipelines/ingest_x.py::process_x"}, info(by_file)
    assert (project.root / ".ingestkit").is_dir()
    assert not (project.root / "pipelines" / ".ingestkit").exists()


def test_rootdir_found_through_the_ingestkit_folder_left_by_an_earlier_run(project, events):
    (project.root / "ingestkit.toml").unlink()
    project.write_noted("pipelines/ingest_x.py", three("x"))
    first = project.run()  # no marker at all: rootdir is the current directory
    assert first.exit_code == 0, info(first)
    assert processors(first) == {"pipelines/ingest_x.py::process_x"}
    assert (project.root / ".ingestkit").is_dir()

    inside = project.run(".", cwd=project.root / "pipelines")
    assert inside.exit_code == 0, info(inside)
    assert f"rootdir: {project.root}" in inside.output
    assert inside.counts == {"unchanged": 3}, info(inside)
    assert not (project.root / "pipelines" / ".ingestkit").exists()


def test_nodeids_when_invoked_from_another_directory(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project.write("pipelines/ingest_x.py", "def process_x():\n    pass\n")
    result = project.run(str(project.root / "pipelines"), cwd=elsewhere)
    assert result.exit_code == 0, info(result)
    assert processors(result) == {"pipelines/ingest_x.py::process_x"}
    assert not (elsewhere / ".ingestkit").exists()


def test_rootdir_found_through_pyproject_tool_ingestkit(project):
    (project.root / "ingestkit.toml").unlink()
    project.write("pyproject.toml", "[tool.ingestkit]\n")
    project.write("a/b/ingest_x.py", "def process_x():\n    pass\n")
    result = project.run(".", cwd=project.root / "a" / "b")
    assert result.exit_code == 0, info(result)
    assert processors(result) == {"a/b/ingest_x.py::process_x"}
    assert (project.root / ".ingestkit").is_dir()
    assert not (project.root / "a" / "b" / ".ingestkit").exists()


def test_nodeid_arguments_select_processors_and_keys(project, events):
    project.write_noted(
        "pipelines/ingest_x.py",
        """
        KEYS = ["1", "2", "3", "a b", "x[1]", "p/q::r"]


        @ingestkit.source([{"k": k} for k in KEYS], key="k")
        def process_a(item):
            note(item.nodeid)


        def process_b():
            note("process_b")
        """,
    )
    node = "pipelines/ingest_x.py::process_a"
    whole = project.run(node)
    assert whole.exit_code == 0, info(whole)
    assert processors(whole) == {node}
    assert len(whole.items) == 6 and "process_b" not in events()

    one = project.run("--reprocess", f"{node}[2]")
    assert one.exit_code == 0, info(one)
    assert [(i["processor"], i["key"]) for i in one.items] == [(node, "2")]
    assert events()[-1] == f"{node}[2]"

    some = project.run("--reprocess", f"{node}[a b]", f"{node}[x[1]]", f"{node}[p/q::r]")
    assert some.exit_code == 0, info(some)
    assert sorted(i["key"] for i in some.items) == ["a b", "p/q::r", "x[1]"]

    inside = project.run("--reprocess", "ingest_x.py::process_a[3]", cwd=project.root / "pipelines")
    assert inside.exit_code == 0, info(inside)
    assert [(i["processor"], i["key"]) for i in inside.items] == [(node, "3")]


def test_a_key_selector_does_not_narrow_a_whole_processor_asked_for_too(project):
    project.write(
        "ingest_x.py",
        """
        import ingestkit


        @ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
        def process_a(record):
            pass
        """,
    )
    result = project.run("ingest_x.py::process_a[1]", "ingest_x.py")
    assert result.exit_code == 0, info(result)
    assert sorted(i["key"] for i in result.items) == ["1", "2", "3"]


def test_unknown_nodeid_or_path_is_a_usage_error(project):
    project.write("ingest_x.py", "def process_x():\n    pass\n")
    assert project.run("ingest_x.py::process_nope").exit_code == 4
    assert project.run("no_such_dir").exit_code == 4


# -- -k ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("alpha", {"process_alpha", "process_alpha_two"}),
        ("ALPHA and not two", {"process_alpha"}),
        ("beta or gamma", {"process_beta", "process_gamma"}),
        ("(alpha or delta) and not one", {"process_alpha_two", "process_delta"}),
        ("not (alpha or beta)", {"process_gamma", "process_delta"}),
        ("sub and not (delta)", {"process_alpha_two"}),
    ],
)
def test_keyword_expressions(project, expression, expected):
    project.write(
        "ingest_one.py",
        "def process_alpha():\n    pass\n\n\ndef process_beta():\n    pass\n\n\n"
        "def process_gamma():\n    pass\n",
    )
    project.write(
        "sub/ingest_two.py",
        "def process_alpha_two():\n    pass\n\n\ndef process_delta():\n    pass\n",
    )
    result = project.run("--collect-only", "-k", expression)
    assert result.exit_code == 0, info(result)
    assert {n.split("::")[1] for n in listed(result)} == expected, info(result)


def test_keyword_selection_runs_only_the_selected(project, events):
    project.write_noted("ingest_one.py", three("alpha") + three("beta"))
    result = project.run("-k", "beta")
    assert result.exit_code == 0, info(result)
    assert processors(result) == {"ingest_one.py::process_beta"}
    assert events() == [f"ingest_one.py::process_beta[{k}]" for k in (1, 2, 3)]


# -- --collect-only and "nothing collected" ----------------------------------------


def test_collect_only_lists_and_runs_nothing(project, events):
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.source(ingestkit.read_csv("data/customers.csv"), key="id")
        def process_customers(record):
            note("ran")


        def process_once():
            note("ran")
        """,
    )
    project.write("data/customers.csv", "id,name\n1,a\n")
    result = project.run("--collect-only")
    assert result.exit_code == 0, info(result)
    assert listed(result) == ["ingest_a.py::process_customers", "ingest_a.py::process_once"]
    assert "customers.csv" in result.output
    assert events() == []
    assert batch_count(project) == 0


@pytest.mark.parametrize("args", [(), ("--collect-only",)])
def test_no_processors_collected_exits_5(project, args):
    project.write("ingest_empty.py", "def helper():\n    pass\n")
    project.write("readme.py", "def process_x():\n    pass\n")
    result = project.run(*args)
    assert result.exit_code == 5, info(result)


# -- collection errors ---------------------------------------------------------------


BROKEN_LAYOUT = {
    "ingest_bad.py": "import ingestkit\n\ndef process_bad(:\n    pass\n",
    "ingest_raises.py": "import ingestkit\n\n\nraise RuntimeError('boom at import')\n",
    "broken/conftest.py": "import ingestkit\nimport no_such_module_here  # noqa\n",
    "broken/ingest_under.py": "def process_under():\n    pass\n",
    "ingest_good.py": "def process_good():\n    pass\n",
    "zzz/ingest_more.py": "def process_more():\n    pass\n",
}


def test_collection_errors_are_reported_with_file_and_line_and_the_rest_runs(project):
    for path, text in BROKEN_LAYOUT.items():
        project.write(path, text)
    result = project.run()
    assert result.exit_code == 1, info(result)
    assert {i["processor"]: i["status"] for i in result.items if "under" not in i["processor"]} == {
        "ingest_good.py::process_good": "succeeded",
        "zzz/ingest_more.py::process_more": "succeeded",
    }
    out = result.output
    assert re.search(r"(?<![/\w])ingest_bad\.py:3\b.*SyntaxError", out), out
    assert re.search(r"(?<![/\w])ingest_raises\.py:4\b.*RuntimeError: boom at import", out), out
    assert re.search(r"broken/conftest\.py:2\b.*no_such_module_here", out), out
    assert project.scalar("SELECT exit_code FROM ingestkit.batches") == 1


def test_collection_errors_with_collect_only(project):
    for path, text in BROKEN_LAYOUT.items():
        project.write(path, text)
    result = project.run("--collect-only")
    assert result.exit_code == 1, info(result)
    assert {"ingest_good.py::process_good", "zzz/ingest_more.py::process_more"} <= set(
        listed(result)
    )
    assert re.search(r"(?<![/\w])ingest_bad\.py:3\b", result.output), info(result)
    assert re.search(r"broken/conftest\.py:2\b", result.output), info(result)


def test_files_below_a_broken_conftest_do_not_run_without_it(project, events):
    project.write(
        "conftest.py",
        """
        import ingestkit


        @ingestkit.fixture
        def target():
            return "production"
        """,
    )
    project.write(
        "staging/conftest.py",
        """
        import no_such_module_here  # noqa

        import ingestkit


        @ingestkit.fixture
        def target():
            return "staging"
        """,
    )
    for name in ("one", "two"):
        body = f"def process_{name}(target):\n    note(target)\n"
        project.write_noted(f"staging/ingest_{name}.py", body)
    project.write_noted("ingest_good.py", "def process_good(target):\n    note('good', target)\n")
    result = project.run()
    assert result.exit_code == 1, info(result)
    assert re.search(r"staging/conftest\.py:1\b", result.output), info(result)
    assert events() == ["good production"]  # never "production" for a staging processor
    assert processors(result) == {"ingest_good.py::process_good"}


# -- order ---------------------------------------------------------------------------


def test_processors_run_in_sorted_file_order_then_definition_order(project, events):
    body = """
        def process_z():
            note("{f}::process_z")


        def process_m():
            note("{f}::process_m")


        def process_a():
            note("{f}::process_a")
        """
    for f in ("ingest_c.py", "b/ingest_x.py", "ingest_a.py", "a/z/ingest_q.py", "ingest_B.py"):
        project.write_noted(f, body.format(f=f))
    result = project.run()
    assert result.exit_code == 0, info(result)
    files = sorted(
        ["ingest_c.py", "b/ingest_x.py", "ingest_a.py", "a/z/ingest_q.py", "ingest_B.py"]
    )
    assert events() == [f"{f}::{p}" for f in files for p in ("process_z", "process_m", "process_a")]
    collected = project.run("--collect-only")
    assert listed(collected) == [
        f"{f}::{p}" for f in files for p in ("process_z", "process_m", "process_a")
    ]


def test_items_run_in_source_order(project, events):
    project.write_noted(
        "ingest_order.py",
        """
        import random

        KEYS = list(range(100))
        random.Random(7).shuffle(KEYS)


        @ingestkit.source(({"id": k} for k in KEYS), key="id")
        def process_order(record):
            note(record["id"])
        """,
    )
    result = project.run()
    assert result.exit_code == 0, info(result)
    import random

    keys = list(range(100))
    random.Random(7).shuffle(keys)
    assert events() == [str(k) for k in keys]


# -- processors without a source ------------------------------------------------------


def test_processor_without_source_runs_once_per_batch_with_empty_key(project, events):
    project.write_noted(
        "ingest_once.py",
        """
        def process_once(item, record):
            note("once", repr(item.key), item.nodeid)


        @ingestkit.source([{"id": 1}], key="id")
        def process_sourced(record):
            note("sourced")
        """,
    )
    first = project.run()
    assert first.exit_code == 0, info(first)
    assert [(i["processor"], i["key"], i["status"]) for i in first.items] == [
        ("ingest_once.py::process_once", "", "succeeded"),
        ("ingest_once.py::process_sourced", "1", "succeeded"),
    ]
    second = project.run()
    assert second.exit_code == 0, info(second)
    assert second.counts == {"succeeded": 1, "unchanged": 1}
    assert [(i["processor"], i["key"], i["status"]) for i in second.items] == [
        ("ingest_once.py::process_once", "", "succeeded"),
    ]
    assert events() == [
        "once '' ingest_once.py::process_once[]",
        "sourced",
        "once '' ingest_once.py::process_once[]",
    ]
