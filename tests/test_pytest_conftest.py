"""pytest's conftest.py tests, ported: ``testing/test_conftest.py`` of pytest.

As in test_pytest_fixtures.py, a test function is a source-less processor; the
project root (with its ``ingestkit.toml``) is the rootdir. Cases about
``--confcutdir``, ``--noconftest``, ``pytest_addoption`` in a conftest and the
internals of pytest's conftest cache have no counterpart and are left out.
"""

from __future__ import annotations

import pytest


def statuses(result) -> dict[str, str]:
    return {i["processor"].split("::")[-1]: i["status"] for i in result.items}


def ok(result) -> str:
    bad = [
        (i["processor"], i["status"], i["error_message"])
        for i in result.items
        if i["status"] != "succeeded"
    ]
    return f"exit {result.exit_code}\n{result.output}\nnot succeeded: {bad}"


def passes(result, n: int) -> None:
    assert result.exit_code == 0, ok(result)
    assert result.counts == {"succeeded": n}, ok(result)


# -- TestConftestVisibility (#616) -------------------------------------------------


def _setup_tree(project):
    project.write("empty/.keep", "")
    project.write(
        "package/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef fxtr():\n    return 'from-package'\n",
    )
    project.write(
        "package/ingest_pkgroot.py",
        "def process_pkgroot(fxtr):\n    assert fxtr == 'from-package'\n",
    )
    project.write("package/swc/__init__.py", "")
    project.write(
        "package/swc/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef fxtr():\n    return 'from-swc'\n",
    )
    project.write(
        "package/swc/ingest_with_conftest.py",
        "def process_with_conftest(fxtr):\n    assert fxtr == 'from-swc'\n",
    )
    project.write("package/snc/__init__.py", "")
    project.write(
        "package/snc/ingest_no_conftest.py",
        "def process_no_conftest(fxtr):\n    assert fxtr == 'from-package'\n",
    )
    root = project.root
    return {
        "runner": root / "empty",
        "package": root / "package",
        "swc": root / "package" / "swc",
        "snc": root / "package" / "snc",
    }


@pytest.mark.parametrize(
    ("chdir", "testarg", "expect_passed"),
    [
        ("runner", "..", 3),
        ("package", "..", 3),
        ("swc", "../..", 3),
        ("snc", "../..", 3),
        ("runner", "../package", 3),
        ("package", ".", 3),
        ("swc", "..", 3),
        ("snc", "..", 3),
        ("runner", "../package/swc", 1),
        ("package", "./swc", 1),
        ("swc", ".", 1),
        ("snc", "../swc", 1),
        ("runner", "../package/snc", 1),
        ("package", "./snc", 1),
        ("swc", "../snc", 1),
        ("snc", ".", 1),
    ],
)
def test_parsefactories_relative_node_ids(project, chdir, testarg, expect_passed):
    dirs = _setup_tree(project)
    passes(project.run(testarg, "--reprocess", cwd=dirs[chdir]), expect_passed)


# -- discovery ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("passed_arg", "expected"), [("src", {"process_1": "succeeded", "process_2": "error"})]
)
def test_search_conftest_up_to_inifile(project, passed_arg, expected):
    """conftest.py files above the rootdir (src/, with its ingestkit.toml) are not loaded."""
    project.write("src/ingestkit.toml", "")
    project.write(
        "src/conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef fix1():\n    pass\n"
    )
    project.write(
        "src/ingest_foo.py",
        "def process_1(fix1):\n    pass\n\ndef process_2(out_of_reach):\n    pass\n",
    )
    project.write(
        "conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef out_of_reach():\n    pass\n"
    )
    result = project.run(passed_arg)
    assert statuses(result) == expected, ok(result)
    assert "fixture 'out_of_reach' not found" in result.items[1]["error_message"]


def test_issue151_load_all_conftests(project):
    names = ["code", "proj", "src"]
    for name in names:
        project.write(
            f"{name}/conftest.py",
            f"import ingestkit\n\n@ingestkit.fixture\ndef where():\n    return {name!r}\n",
        )
        project.write(
            f"{name}/ingest_{name}.py",
            f"def process_{name}(where):\n    assert where == {name!r}\n",
        )
    passes(project.run(*names), 3)


def test_conftest_import_order(project, events):
    project.write_noted("conftest.py", "note('root conftest')\n")
    project.write_noted("sub/conftest.py", "note('sub conftest')\n")
    project.write("sub/ingest_a.py", "def process_a():\n    pass\n")
    passes(project.run("sub"), 1)
    assert events() == ["root conftest", "sub conftest"]


def test_conftests_are_separate_modules(project):
    """test_conftest_global_import: two conftest.py files are two modules, not one."""
    project.write(
        "conftest.py",
        "import ingestkit\n\nx = 3\n\n@ingestkit.fixture\ndef root_x():\n    return x\n",
    )
    project.write(
        "sub/conftest.py",
        "import ingestkit\n\nx = 4\n\n@ingestkit.fixture\ndef sub_x():\n    return x\n",
    )
    project.write(
        "sub/ingest_a.py", "def process_a(root_x, sub_x):\n    assert (root_x, sub_x) == (3, 4)\n"
    )
    passes(project.run(), 1)


def test_conftest_in_nonpkg_with_init(project):
    project.write("adir-1.0/__init__.py", "")
    project.write(
        "adir-1.0/conftest.py",
        "import ingestkit\n\na = 1\n\n@ingestkit.fixture\ndef a_value():\n    return a\n",
    )
    project.write("adir-1.0/b/__init__.py", "")
    project.write(
        "adir-1.0/b/conftest.py",
        "import ingestkit\n\na = 1.5\n\n@ingestkit.fixture\ndef a_value():\n    return a\n",
    )
    project.write("adir-1.0/b/ingest_b.py", "def process_b(a_value):\n    assert a_value == 1.5\n")
    project.write("adir-1.0/ingest_a.py", "def process_a(a_value):\n    assert a_value == 1\n")
    passes(project.run(), 2)


def test_conftest_uppercase(project):
    project.write("__init__.py", "")
    project.write("Foo/__init__.py", "")
    project.write("Foo/conftest.py", "")
    result = project.run()
    assert result.exit_code == 5, result.output


@pytest.mark.parametrize("name", [".dotdir", "node_modules"])
def test_conftest_in_ignored_directory_is_not_loaded(project, name):
    """test_setinitial_conftest_subdirs: directories that are not collected keep their conftest."""
    project.write(f"{name}/conftest.py", "raise RuntimeError('must not be imported')\n")
    project.write("ingest_a.py", "def process_a():\n    pass\n")
    passes(project.run(), 1)


def test_fixture_dependency(project):
    project.write("conftest.py", "")
    project.write(
        "sub/conftest.py",
        """
        import ingestkit

        @ingestkit.fixture
        def not_needed():
            assert False, "Should not be called!"

        @ingestkit.fixture
        def foo():
            assert False, "Should not be called!"

        @ingestkit.fixture
        def bar(foo):
            return "bar"
        """,
    )
    project.write(
        "sub/subsub/ingest_bar.py",
        """
        import ingestkit

        @ingestkit.fixture
        def bar():
            return "sub bar"

        def process_event_fixture(bar):
            assert bar == "sub bar"
        """,
    )
    passes(project.run("sub"), 1)


def test_conftest_symlink(project):
    """Discovery follows the paths as given; a symlink to a tree does not break it."""
    project.write(
        "real/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef fixture():\n    return 1\n",
    )
    project.write("real/app/tests/ingest_foo.py", "def process_1(fixture):\n    pass\n")
    (project.root / "symlink").symlink_to(project.root / "real")
    passes(project.run("real"), 1)


# -- special objects, errors -------------------------------------------------------


def test_issue1073_conftest_special_objects(project):
    project.write(
        "conftest.py",
        """
        class DontTouchMe(object):
            def __getattr__(self, x):
                raise Exception("cant touch me")

        x = DontTouchMe()
        """,
    )
    project.write("ingest_a.py", "def process_some():\n    pass\n")
    passes(project.run(), 1)


def test_conftest_exception_handling(project):
    """Deliberate difference: pytest exits 4; a broken conftest.py is a collection error, exit 1."""
    project.write("conftest.py", "raise ValueError()\n")
    project.write("ingest_a.py", "def process_some():\n    pass\n")
    project.write("other/ingestkit.toml", "")
    result = project.run()
    assert result.exit_code == 1, result.output
    assert "ERROR collecting ingest_a.py" in result.output
    assert "conftest.py:1: ValueError" in result.output, result.output
    assert result.items == []


def test_conftest_error_in_subdir_leaves_siblings_running(project):
    project.write("bad/conftest.py", "import ingestkit\n\n1 / 0\n")
    project.write("bad/ingest_a.py", "def process_bad():\n    pass\n")
    project.write("good/ingest_b.py", "def process_good():\n    pass\n")
    result = project.run()
    assert result.exit_code == 1
    assert statuses(result) == {"process_good": "succeeded"}
    assert "bad/conftest.py:3: ZeroDivisionError" in result.output, result.output


def test_hook_proxy(project):
    """A conftest's hooks apply below its own directory only (#2016)."""
    project.write("root/demo-0/ingest_foo1.py", "def process_1():\n    pass\n")
    project.write("root/demo-a/ingest_foo2.py", "def process_2():\n    pass\n")
    project.write(
        "root/demo-a/conftest.py",
        "def ingestkit_ignore_collect(collection_path, config):\n    return True\n",
    )
    project.write("root/demo-b/ingest_foo3.py", "def process_3():\n    pass\n")
    project.write("root/demo-c/ingest_foo4.py", "def process_4():\n    pass\n")
    result = project.run()
    assert statuses(result) == {
        "process_1": "succeeded",
        "process_3": "succeeded",
        "process_4": "succeeded",
    }, ok(result)


# -- hooks and plugins in a conftest.py --------------------------------------------


def test_conftest_configure_is_called_without_marker(project, events):
    project.write_noted(
        "conftest.py",
        """
        def ingestkit_configure(config):
            note("configure", config.rootdir.name)
        """,
    )
    project.write("ingest_a.py", "def process_a():\n    pass\n")
    passes(project.run(), 1)
    assert events() == ["configure project"]


@pytest.mark.parametrize("marker", ["", "@ingestkit.hookimpl"])
def test_conftest_registers_plugin_object_with_fixtures(project, marker):
    """pytest_plugin_registered: fixtures of a plugin registered from a conftest are found."""
    project.write(
        "conftest.py",
        f"""
        import ingestkit

        class Plugin:
            @ingestkit.fixture(scope="batch")
            def from_plugin(self):
                \"\"\"A fixture on a plugin object.\"\"\"
                return 5

            @ingestkit.hookimpl
            def ingestkit_processor_start(self, processor):
                processor.started_by_plugin = True

        {marker}
        def ingestkit_configure(config):
            config.pluginmanager.register(Plugin(), "myplugin")
        """,
    )
    project.write("sub/ingest_a.py", "def process_a(from_plugin):\n    assert from_plugin == 5\n")
    passes(project.run(), 1)
    listed = project.run("--fixtures")
    assert (
        "from_plugin [batch scope] -- conftest.py:5\n    A fixture on a plugin object."
        in listed.output
    ), listed.output


def test_conftest_unmarked_hook_other_than_configure(project):
    project.write(
        "conftest.py",
        """
        def ingestkit_collection_modifyitems(session, config, processors):
            processors.reverse()
        """,
    )
    project.write(
        "ingest_a.py",
        "ORDER = []\n\ndef process_a():\n    ORDER.append('a')\n\ndef process_b():\n"
        "    ORDER.append('b')\n",
    )
    result = project.run()
    passes(result, 2)
    assert [
        i["processor"].split("::")[1] for i in sorted(result.items, key=lambda i: i["finished_at"])
    ] == [
        "process_b",
        "process_a",
    ]


def test_conftest_configure_raising_is_a_collection_error(project):
    project.write(
        "sub/conftest.py",
        """
        def ingestkit_configure(config):
            raise RuntimeError("configure broke")

        def ingestkit_collection_modifyitems(session, config, processors):
            processors.clear()
        """,
    )
    project.write("sub/ingest_a.py", "def process_a():\n    pass\n")
    project.write("ingest_b.py", "def process_b():\n    pass\n")
    result = project.run()
    assert result.exit_code == 1, result.output
    assert "ERROR collecting sub/ingest_a.py" in result.output
    assert "configure broke" in result.output
    assert statuses(result) == {"process_b": "succeeded"}  # its other hooks did not run
