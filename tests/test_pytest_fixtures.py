"""pytest's own fixture tests, ported: ``testing/python/fixtures.py`` of pytest.

Each case is pytest's, written anew as an ingestkit project: function scope is
``item``, class scope is ``processor``, module is ``module``, session is
``batch``; a test function is a source-less processor (one item), whose
``assert`` makes its item ``failed``. Cases about parametrisation, classes as
test containers, marks and xunit setup have no counterpart and are left out.
Where ingestkit differs on purpose, the case says so (see docs/fixtures.md).
"""

from __future__ import annotations

import re

import pytest


def statuses(result) -> dict[str, str]:
    """``{processor function name: status}`` of a run's items (source-less processors)."""
    return {i["processor"].split("::")[-1]: i["status"] for i in result.items}


def messages(result) -> dict[str, str]:
    return {i["processor"].split("::")[-1]: i["error_message"] or "" for i in result.items}


def ok(result) -> str:
    bad = [
        (i["processor"], i["key"], i["status"], i["error_message"])
        for i in result.items
        if i["status"] != "succeeded"
    ]
    return f"exit {result.exit_code}\n{result.output}\nnot succeeded: {bad}"


def passes(result, n: int) -> None:
    assert result.exit_code == 0, ok(result)
    assert result.counts == {"succeeded": n}, ok(result)


# -- TestFillFixtures --------------------------------------------------------


def test_funcarg_lookupfails(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def xyzsomething(request):
            return 42

        def process_func(some):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    message = messages(result)["process_func"]
    assert message.startswith("fixture 'some' not found"), message
    assert "xyzsomething" in message


def test_detect_recursive_dependency_error(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def fix1(fix2):
            return 1

        @ingestkit.fixture
        def fix2(fix1):
            return 1

        def process_it(fix1):
            pass
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_it": "error"}
    assert (
        "recursive dependency involving fixture 'fix1' detected" in messages(result)["process_it"]
    )


def test_funcarg_basic(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def some(request):
            return request.fixturename

        @ingestkit.fixture
        def other(request):
            return 42

        def process_func(some, other):
            assert some == "some"
            assert other == 42
        """,
    )
    passes(project.run(), 1)


def test_funcarg_lookup_modulelevel(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def something(request):
            return request.nodeid

        def process_func(something):
            assert something == "ingest_a.py::process_func[]", something

        def process_func2(something):
            assert something == "ingest_a.py::process_func2[]", something
        """,
    )
    passes(project.run(), 2)


def test_conftest_funcargs_only_available_in_subdir(project):
    project.write(
        "sub1/conftest.py",
        """
        import ingestkit

        @ingestkit.fixture
        def arg1(request):
            return "sub1"
        """,
    )
    project.write(
        "sub2/conftest.py",
        """
        import ingestkit

        @ingestkit.fixture
        def arg2(request):
            return "sub2"
        """,
    )
    project.write("sub1/ingest_1.py", "def process_one(arg1):\n    assert arg1 == 'sub1'\n")
    project.write("sub2/ingest_2.py", "def process_two(arg2):\n    assert arg2 == 'sub2'\n")
    project.write("sub2/ingest_3.py", "def process_three(arg1):\n    pass\n")
    result = project.run()
    assert statuses(result) == {
        "process_one": "succeeded",
        "process_two": "succeeded",
        "process_three": "error",
    }
    assert messages(result)["process_three"].startswith("fixture 'arg1' not found")


def test_extend_fixture_conftest_module(project):
    project.write(
        "conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef spam():\n    return 'spam'\n"
    )
    project.write(
        "pkg/ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def spam(spam):
            return spam * 2

        def process_spam(spam):
            assert spam == "spamspam"
        """,
    )
    passes(project.run(), 1)
    passes(project.run("--reprocess", "pkg/ingest_a.py"), 1)


def test_extend_fixture_conftest_conftest(project):
    project.write(
        "conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef spam():\n    return 'spam'\n"
    )
    project.write(
        "pkg/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef spam(spam):\n    return spam * 2\n",
    )
    project.write("pkg/ingest_a.py", "def process_spam(spam):\n    assert spam == 'spamspam'\n")
    passes(project.run(), 1)
    passes(project.run("pkg/ingest_a.py"), 1)


def test_extend_fixture_module_module_conftest_three_levels(project):
    """test_override_top_level_fixture_reusing_super_fixture: three levels of overriding."""
    project.write(
        "conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef foo():\n    return 1\n"
    )
    project.write(
        "pkg/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef foo(foo):\n    return foo + 10\n",
    )
    project.write(
        "pkg/ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def foo(foo):
            return foo * 2

        def process_spam(foo):
            assert foo == 22
        """,
    )
    passes(project.run(), 1)


@pytest.fixture
def plugin_path(project, monkeypatch):
    """Plugin modules written into the project can be loaded with ``-p NAME``."""
    monkeypatch.syspath_prepend(str(project.root / "plugins"))
    yield project.root / "plugins"
    import sys

    for name in [n for n in sys.modules if n.startswith("ikplugin")]:
        del sys.modules[name]


def test_extend_fixture_conftest_plugin(project, plugin_path):
    project.write(
        "plugins/ikplugin_foo.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef foo():\n    return 7\n",
    )
    project.write(
        "conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef foo(foo):\n    return foo + 7\n"
    )
    project.write("ingest_a.py", "def process_foo(foo):\n    assert foo == 14\n")
    passes(project.run("-p", "ikplugin_foo", "ingest_a.py"), 1)


def test_extend_fixture_plugin_plugin(project, plugin_path):
    project.write(
        "plugins/ikplugin_zero.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef foo():\n    return 7\n",
    )
    project.write(
        "plugins/ikplugin_one.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef foo(foo):\n    return foo + 7\n",
    )
    project.write("ingest_a.py", "def process_foo(foo):\n    assert foo == 14\n")
    passes(project.run("-p", "ikplugin_zero", "-p", "ikplugin_one", "ingest_a.py"), 1)


def test_autouse_fixture_plugin(project, plugin_path):
    project.write(
        "plugins/ikplugin_auto.py",
        """
        import ingestkit

        SEEN = []

        @ingestkit.fixture(autouse=True)
        def foo(request):
            SEEN.append(request.nodeid)
        """,
    )
    project.write(
        "ingest_a.py",
        "import ikplugin_auto\n\ndef process_foo():\n"
        "    assert ikplugin_auto.SEEN == ['ingest_a.py::process_foo[]']\n",
    )
    passes(project.run("-p", "ikplugin_auto", "ingest_a.py"), 1)


def test_funcarg_lookup_error_lists_sorted_fixtures(project):
    project.write(
        "conftest.py",
        """
        import ingestkit

        @ingestkit.fixture
        def d_fixture(): pass

        @ingestkit.fixture
        def b_fixture(): pass

        @ingestkit.fixture
        def c_fixture(): pass

        @ingestkit.fixture
        def a_fixture(): pass
        """,
    )
    project.write("ingest_a.py", "def process_lookup_error(unknown):\n    pass\n")
    result = project.run()
    assert result.exit_code == 1
    message = messages(result)["process_lookup_error"]
    lines = message.splitlines()
    assert lines[0] == "fixture 'unknown' not found"
    assert re.search(
        r"^available fixtures: a_fixture, b_fixture, batch, c_fixture, config, d_fixture, db, ",
        lines[1],
    )
    assert lines[2] == "use 'ingestkit --fixtures [paths]' for help on them."
    assert "INTERNAL" not in result.output


def test_fixture_excinfo_leak(project):
    project.write(
        "ingest_a.py",
        """
        import sys
        import ingestkit

        @ingestkit.fixture
        def leak():
            assert sys.exc_info() == (None, None, None)

        def process_leak(leak):
            assert sys.exc_info() == (None, None, None)
        """,
    )
    passes(project.run(), 1)


# -- TestRequestBasic --------------------------------------------------------


def test_request_attributes(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def something(request):
            return request

        @ingestkit.fixture(scope="processor")
        def proc(request):
            return (request.fixturename, request.scope, request.nodeid)

        @ingestkit.fixture(scope="module")
        def mod(request):
            return (request.fixturename, request.scope, request.nodeid)

        @ingestkit.fixture(scope="batch")
        def whole(request):
            return (request.fixturename, request.scope, request.nodeid)

        def process_func(something, proc, mod, whole, config):
            assert something.fixturename == "something"
            assert something.scope == "item"
            assert something.nodeid == "ingest_a.py::process_func[]"
            assert something.config is config
            assert proc == ("proc", "processor", "ingest_a.py::process_func")
            assert mod == ("mod", "module", "ingest_a.py")
            assert whole == ("whole", "batch", "")
        """,
    )
    passes(project.run(), 1)


def test_getfixturevalue_recursive(project):
    """``request.getfixturevalue(own name)`` in an override gives the outer definition."""
    project.write(
        "conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef something(request):\n    return 1\n",
    )
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def something(request):
            return request.getfixturevalue("something") + 1

        def process_func(something):
            assert something == 2
        """,
    )
    passes(project.run(), 1)


def test_getfixturevalue_recursive_three_levels(project):
    project.write(
        "conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef x(request):\n    return 1\n"
    )
    project.write(
        "pkg/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef x(request):\n"
        "    return request.getfixturevalue('x') + 10\n",
    )
    project.write(
        "pkg/ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def x(request):
            return request.getfixturevalue("x") * 2

        def process_func(x):
            assert x == 22
        """,
    )
    passes(project.run(), 1)


def test_getfixturevalue_own_name_without_outer_definition(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def lonely(request):
            return request.getfixturevalue("lonely")

        def process_func(lonely):
            pass
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_func": "error"}
    assert "RecursionError" not in (result.items[0]["error_type"] or "")
    assert (
        "recursive dependency involving fixture 'lonely' detected"
        in messages(result)["process_func"]
    )


def test_getfixturevalue_teardown(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="batch")
        def resource():
            r = ["value"]
            yield r
            r.pop()

        @ingestkit.fixture(scope="batch")
        def inner(request):
            resource = request.getfixturevalue("resource")
            assert resource == ["value"]
            yield
            assert resource == ["value"]

        def process_inner(inner):
            pass

        def process_func(resource):
            pass
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_inner": "succeeded", "process_func": "succeeded"}, ok(
        result
    )


def test_getfixturevalue(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def something(request):
            return 1

        values = [2]

        @ingestkit.fixture
        def other(request):
            return values.pop()

        def process_func(something, request):
            try:
                request.getfixturevalue("notexists")
            except LookupError as exc:
                assert "fixture 'notexists' not found" in str(exc)
            else:
                raise AssertionError("no error")
            assert request.getfixturevalue("something") == 1
            assert request.getfixturevalue("something") == 1
            assert request.getfixturevalue("other") == 2
            assert request.getfixturevalue("other") == 2  # cached for the item
        """,
    )
    passes(project.run(), 1)


GETFIXTUREVALUE_WIDE = """
import ingestkit

@ingestkit.fixture(scope="{scope}")
def module_thing():
    return "module"

@ingestkit.fixture(scope="{scope}")
def wide(request):
    return (request.getfixturevalue("module_thing"), request.getfixturevalue("sub_thing"))

def process_func(wide):
    assert wide == ("module", "sub"), wide
"""


@pytest.mark.parametrize("scope", ["processor", "module", "batch"])
def test_getfixturevalue_from_wider_scopes_sees_module_and_subdir_conftest(project, scope):
    """pytest: test_getfixturevalue_from_session/module-scoped fixture (#11232)."""
    project.write(
        "sub/conftest.py",
        f"import ingestkit\n\n@ingestkit.fixture(scope='{scope}')\ndef sub_thing():\n"
        f"    return 'sub'\n",
    )
    project.write("sub/ingest_a.py", GETFIXTUREVALUE_WIDE.format(scope=scope))
    passes(project.run(), 1)


def test_getfixturevalue_from_batch_fixture_in_root_conftest(project):
    """The batch fixture is defined further out; what it asks for is the requester's."""
    project.write(
        "conftest.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="batch")
        def settings(request):
            return request.getfixturevalue("dsn_name")
        """,
    )
    project.write(
        "sub/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture(scope='batch')\ndef dsn_name():\n"
        "    return 'sub'\n",
    )
    project.write("sub/ingest_a.py", "def process_func(settings):\n    assert settings == 'sub'\n")
    passes(project.run(), 1)


def test_getfixturevalue_scope_mismatch(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def narrow():
            return 1

        @ingestkit.fixture(scope="batch")
        def wide(request):
            return request.getfixturevalue("narrow")

        def process_func(wide):
            pass
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_func": "error"}
    message = messages(result)["process_func"]
    assert "ScopeMismatch" in message and "'wide'" in message and "'narrow'" in message, message


def test_request_addfinalizer(project, events):
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture
        def something(request):
            request.addfinalizer(lambda: note("finalized"))

        def process_func(something):
            note("call")
        """,
    )
    passes(project.run(), 1)
    assert events() == ["call", "finalized"]


def test_request_addfinalizer_failing_setup(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = [1]

        @ingestkit.fixture
        def myfix(request):
            request.addfinalizer(values.pop)
            assert 0

        def process_fix(myfix):
            pass

        def process_finalizer_ran():
            assert not values
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_fix": "error", "process_finalizer_ran": "succeeded"}


def test_request_addfinalizer_failing_setup_module(project, events):
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(scope="module")
        def myfix(request):
            request.addfinalizer(lambda: note("fin 1"))
            request.addfinalizer(lambda: note("fin 2"))
            assert 0

        def process_fix(myfix):
            pass
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_fix": "error"}
    assert events() == ["fin 2", "fin 1"]


def test_request_addfinalizer_partial_setup_failure(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture
        def something(request):
            request.addfinalizer(lambda: values.append(None))

        def process_func(something, missingarg):
            pass

        def process_second():
            assert len(values) == 0  # the processor never set up: resolution failed first
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_func": "error", "process_second": "succeeded"}


def test_request_subrequest_addfinalizer_exceptions(project):
    """Every finalizer runs, and every error they raise is reported (#2440)."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        def _excepts(where):
            raise Exception("Error in %s fixture" % where)

        @ingestkit.fixture
        def subrequest(request):
            return request

        @ingestkit.fixture
        def something(subrequest):
            subrequest.addfinalizer(lambda: values.append(1))
            subrequest.addfinalizer(lambda: values.append(2))
            subrequest.addfinalizer(lambda: _excepts("something"))

        @ingestkit.fixture
        def excepts(subrequest):
            subrequest.addfinalizer(lambda: _excepts("excepts"))
            subrequest.addfinalizer(lambda: values.append(3))

        def process_first(something, excepts):
            pass

        def process_second():
            assert values == [3, 2, 1]
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_first": "error", "process_second": "succeeded"}, ok(result)
    message = messages(result)["process_first"]
    assert "Error in something fixture" in message, message
    assert "Error in excepts fixture" in message, message


def test_wider_teardown_errors_are_all_reported(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="module")
        def one(request):
            request.addfinalizer(lambda: 1 / 0)
            request.addfinalizer(lambda: {}["missing"])

        def process_first(one):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert statuses(result) == {"process_first": "succeeded"}
    assert "ZeroDivisionError" in result.output and "KeyError" in result.output, result.output


def test_setupdecorator_and_autouse_order(project):
    """test_setupdecorator_and_xunit: a wider autouse fixture sets up before a narrower one."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture(autouse=True)
        def setup_function():
            values.append("function")

        @ingestkit.fixture(scope="module", autouse=True)
        def setup_module():
            values.append("module")

        def process_func():
            pass

        def process_all():
            assert values == ["module", "function", "function"], values
        """,
    )
    passes(project.run(), 2)


def test_fixtures_sub_subdir_normalize_sep(project):
    project.write(
        "tests/unit/conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef arg1():\n    pass\n"
    )
    project.write("tests/unit/ingest_module.py", "def process_func(arg1):\n    pass\n")
    result = project.run("tests/unit/ingest_module.py", "--fixtures")
    assert result.exit_code == 0, result.output
    assert re.search(r"^arg1 -- tests/unit/conftest\.py:4$", result.output, re.M), result.output


def test_newstyle_with_request(project):
    project.write(
        "ingest_a.py",
        "import ingestkit\n\n@ingestkit.fixture()\ndef arg(request):\n    pass\n\n"
        "def process_1(arg):\n    pass\n",
    )
    passes(project.run(), 1)


# -- TestFixtureUsages -------------------------------------------------------


def test_noargfixturedec(project):
    project.write(
        "ingest_a.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef arg1():\n    return 1\n\n"
        "def process_func(arg1):\n    assert arg1 == 1\n",
    )
    passes(project.run(), 1)


def test_receives_funcargs(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture()
        def arg1():
            return 1

        @ingestkit.fixture()
        def arg2(arg1):
            return arg1 + 1

        def process_add(arg2):
            assert arg2 == 2

        def process_all(arg1, arg2):
            assert arg1 == 1
            assert arg2 == 2
        """,
    )
    passes(project.run(), 2)


@pytest.mark.parametrize("also_direct", [False, True])
def test_receives_funcargs_scope_mismatch(project, also_direct):
    project.write(
        "ingest_a.py",
        f"""
        import ingestkit

        @ingestkit.fixture(scope="item")
        def arg1():
            return 1

        @ingestkit.fixture(scope="module")
        def arg2(arg1):
            return arg1 + 1

        def process_add({"arg1, " if also_direct else ""}arg2):
            assert arg2 == 2
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_add": "error"}
    message = messages(result)["process_add"]
    assert "ScopeMismatch" in message
    assert (
        "fixture 'arg2' with scope 'module' requested fixture 'arg1' with scope 'item'" in message
    )


def test_invalid_scope(project):
    project.write(
        "ingest_invalid_scope.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="functions")
        def badscope():
            pass

        def process_nothing(badscope):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert "ERROR collecting ingest_invalid_scope.py" in result.output
    assert (
        "fixture 'badscope' (ingest_invalid_scope.py:4): unknown fixture scope 'functions'"
        in result.output
    ), result.output


def test_factory_uses_unknown_funcarg_as_dependency_error(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture()
        def fail(missing):
            return

        @ingestkit.fixture()
        def call_fail(fail):
            return

        def process_missing(call_fail):
            pass
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_missing": "error"}
    message = messages(result)["process_missing"]
    assert message.startswith("fixture 'missing' not found"), message
    chain = message[message.index("requested by:") :].splitlines()
    assert chain == [
        "requested by:",
        "  ingest_a.py::process_missing(call_fail)",
        "  ingest_a.py:8: def call_fail(fail)",
        "  ingest_a.py:4: def fail(missing)",
    ], message


def test_factory_setup_as_class(project):
    """Deliberate difference: pytest rejects a class as a fixture; ingestkit calls it."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="batch")
        class Client:
            def __init__(self, config):
                self.rootdir = config.rootdir

        def process_it(Client):
            assert isinstance(Client, ingestkit_client_type())

        def ingestkit_client_type():
            return Client
        """,
    )
    passes(project.run(), 1)
    listed = project.run("--fixtures")
    assert "Client [batch scope] -- ingest_a.py:4\n" in listed.output, listed.output


def test_fixture_finalizer_runs_after_use(project, events):
    """TestFixtureMarker::test_fixture_finalizer: a conftest finalizer runs when its item ends."""
    project.write_noted(
        "conftest.py",
        """
        @ingestkit.fixture
        def browser(request):
            request.addfinalizer(lambda: note("Finalized"))
            return {}
        """,
    )
    project.write_noted("sub/ingest_a.py", "def process_browser(browser):\n    note('call')\n")
    passes(project.run(), 1)
    assert events() == ["call", "Finalized"]


# -- TestFixtureManagerParseFactories ---------------------------------------


LAZY_SETTINGS = """
class LazySettings:
    \"\"\"Like django.conf.settings: any attribute access before configuration raises.\"\"\"

    def __getattr__(self, name):
        raise RuntimeError("settings are not configured (asked for " + name + ")")


settings = LazySettings()
"""


def test_parsefactories_evil_objects_issue214(project):
    project.write(
        "ingest_a.py",
        "import ingestkit\n"
        + LAZY_SETTINGS
        + """
@ingestkit.fixture
def after():
    return 1

def process_func(after):
    assert after == 1
""",
    )
    passes(project.run(), 1)


def test_conftest_with_evil_objects_keeps_later_fixtures(project):
    """pytest test_conftest.py::test_issue1073_conftest_special_objects, and more."""
    project.write(
        "conftest.py",
        "import ingestkit\n"
        + LAZY_SETTINGS
        + """
@ingestkit.fixture
def after_settings():
    return "after"
""",
    )
    project.write(
        "sub/ingest_a.py",
        "def process_func(after_settings):\n    assert after_settings == 'after'\n",
    )
    result = project.run()
    passes(result, 1)
    listed = project.run("--fixtures")
    assert "after_settings -- conftest.py:" in listed.output, listed.output


def test_parsefactories_conftest_and_module(project):
    project.write(
        "conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef hello():\n    return 'conftest'\n",
    )
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def hello():
            return "module"

        def process_hello(hello):
            assert hello == "module"
        """,
    )
    project.write("ingest_b.py", "def process_hello_b(hello):\n    assert hello == 'conftest'\n")
    passes(project.run(), 2)


def test_parsefactories_relative_node_ids(project):
    """Fixtures of a conftest two levels down are visible in that package only, from anywhere."""
    project.write(
        "package/conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef one():\n    return 1\n"
    )
    project.write(
        "package/sub/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef one():\n    return 2\n",
    )
    project.write("package/ingest_x.py", "def process_x(one):\n    assert one == 1\n")
    project.write("package/sub/ingest_y.py", "def process_y(one):\n    assert one == 2\n")
    passes(project.run(), 2)
    passes(project.run("--reprocess", "."), 2)
    passes(project.run("--reprocess", "ingest_y.py", cwd=project.root / "package" / "sub"), 1)
    passes(project.run("--reprocess", ".", cwd=project.root / "package"), 2)


def test_fixture_marked_function_not_collected_as_processor(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def process_app():
            return 1

        def process_something(process_app):
            assert process_app == 1
        """,
    )
    result = project.run()
    passes(result, 1)
    assert statuses(result) == {"process_something": "succeeded"}
    collected = project.run("--collect-only")
    assert "process_app" not in collected.output.replace("process_app)", ""), collected.output


# -- TestAutouseDiscovery / TestAutouseManagement ------------------------------


def test_autouse_in_conftests(project):
    project.write(
        "a/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture(autouse=True)\ndef hello():\n"
        "    raise RuntimeError('autouse of a')\n",
    )
    project.write("a/ingest_something.py", "def process_func():\n    pass\n")
    project.write("a1/ingest_otherfile.py", "def process_func2():\n    pass\n")
    result = project.run()
    assert statuses(result) == {"process_func": "error", "process_func2": "succeeded"}
    assert messages(result)["process_func"] == "autouse of a"


def test_autouse_conftest_mid_directory(project):
    project.write(
        "xyz123/conftest.py",
        """
        import ingestkit

        @ingestkit.fixture(autouse=True)
        def app():
            import sys
            sys._myapp = "hello"
        """,
    )
    project.write(
        "xyz123/tests/ingest_app.py",
        "import sys\n\ndef process_app():\n    assert sys._myapp == 'hello'\n    del sys._myapp\n",
    )
    passes(project.run(), 1)


def test_funcarg_and_setup(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture(scope="module")
        def arg():
            values.append(1)
            return 0

        @ingestkit.fixture(scope="module", autouse=True)
        def something(arg):
            values.append(2)

        def process_hello(arg):
            assert len(values) == 2
            assert values == [1, 2]
            assert arg == 0

        def process_hello2(arg):
            assert len(values) == 2
            assert values == [1, 2]
            assert arg == 0
        """,
    )
    passes(project.run(), 2)


def test_uses_parametrized_resource_module_teardown(project, events):
    """test_scope_module_and_finalizer: a module fixture is torn down once, after its module."""
    project.write_noted(
        "conftest.py",
        """
        @ingestkit.fixture(scope="module")
        def arg(request):
            note("setup", request.nodeid)
            request.addfinalizer(lambda: note("teardown", request.nodeid))
            return 1
        """,
    )
    project.write(
        "ingest_mod1.py", "def process_1(arg):\n    pass\n\ndef process_2(arg):\n    pass\n"
    )
    project.write("ingest_mod2.py", "def process_3(arg):\n    pass\n")
    passes(project.run(), 3)
    assert events() == [
        "setup ingest_mod1.py",
        "teardown ingest_mod1.py",
        "setup ingest_mod2.py",
        "teardown ingest_mod2.py",
    ]


def test_autouse_ordering_wider_first_outer_first(project, events):
    """TestScopeOrdering::test_func_closure_scopes_reordered and module_auto."""
    project.write_noted(
        "conftest.py",
        """
        @ingestkit.fixture(autouse=True)
        def c_item():
            note("conftest item")

        @ingestkit.fixture(scope="batch", autouse=True)
        def c_batch():
            note("conftest batch")
        """,
    )
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(autouse=True)
        def m_item():
            note("module item")

        @ingestkit.fixture(scope="module", autouse=True)
        def m_module():
            note("module module")

        @ingestkit.fixture(scope="processor")
        def p_proc():
            note("processor")

        def process_it(p_proc):
            note("call")
        """,
    )
    passes(project.run(), 1)
    assert events() == [
        "conftest batch",
        "module module",
        "processor",
        "conftest item",
        "module item",
        "call",
    ]


# -- TestFixtureMarker -------------------------------------------------------


def test_scope_batch(project):
    project.write(
        "conftest.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture(scope="batch")
        def arg():
            values.append(1)
            return 1

        @ingestkit.fixture(scope="batch")
        def values_seen():
            return values
        """,
    )
    project.write(
        "ingest_a.py",
        """
        def process_1(arg):
            assert arg == 1

        def process_2(arg, values_seen):
            assert arg == 1
            assert len(values_seen) == 1
        """,
    )
    project.write(
        "ingest_b.py", "def process_3(arg, values_seen):\n    assert values_seen == [1]\n"
    )
    passes(project.run(), 3)


def test_scope_batch_exc(project):
    """A batch fixture whose setup raises is tried once; every user is an error."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture(scope="batch")
        def fix():
            values.append(1)
            ingestkit.skip("skipping")

        def process_1(fix):
            pass

        def process_2(fix):
            pass

        def process_last():
            assert values == [1]
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert statuses(result) == {
        "process_1": "skipped",
        "process_2": "skipped",
        "process_last": "succeeded",
    }


def test_scope_exc(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        reqs = []

        @ingestkit.fixture(scope="module")
        def fixture(request):
            reqs.append(1)
            raise RuntimeError("module setup broke")

        def process_1(fixture):
            pass

        def process_2(fixture):
            pass

        def process_last():
            assert reqs == [1]
        """,
    )
    result = project.run()
    assert statuses(result) == {
        "process_1": "error",
        "process_2": "error",
        "process_last": "succeeded",
    }
    assert messages(result)["process_2"] == "module setup broke"


def test_scope_module_uses_batch(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture(scope="batch")
        def whole():
            values.append("batch")
            return 1

        @ingestkit.fixture(scope="module")
        def arg(whole):
            values.append("module")
            return whole + 1

        def process_1(arg):
            assert arg == 2

        def process_2(arg):
            assert values == ["batch", "module"]
        """,
    )
    passes(project.run(), 2)


@pytest.mark.parametrize(
    ("wide", "narrow"),
    [("batch", "module"), ("batch", "processor"), ("module", "processor"), ("processor", "item")],
)
def test_scope_mismatch_various(project, wide, narrow):
    project.write(
        "conftest.py",
        f"import ingestkit\n\n@ingestkit.fixture(scope='{narrow}')\ndef arg(request):\n    pass\n",
    )
    project.write(
        "ingest_a.py",
        f"""
        import ingestkit

        @ingestkit.fixture(scope="{wide}")
        def arg2(arg):
            pass

        def process_mismatch(arg2):
            pass
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_mismatch": "error"}
    message = messages(result)["process_mismatch"]
    assert (
        f"fixture 'arg2' with scope '{wide}' requested fixture 'arg' with scope '{narrow}'"
        in message
    )


def test_register_only_with_mark(project):
    """A plain function named like a fixture is not one."""
    project.write(
        "conftest.py", "import ingestkit\n\n@ingestkit.fixture()\ndef arg():\n    return 1\n"
    )
    project.write(
        "sub/ingest_a.py",
        """
        import ingestkit

        def arg(arg):
            return arg + 1

        def process_1(arg):
            assert arg == 1
        """,
    )
    passes(project.run(), 1)


def test_fixture_teardown_order_across_scopes(project, events):
    """test_class_ordering / finalizer order: teardown in reverse setup order, per scope."""
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(scope="batch")
        def s():
            note("setup s")
            yield
            note("teardown s")

        @ingestkit.fixture(scope="module")
        def m(s):
            note("setup m")
            yield
            note("teardown m")

        @ingestkit.fixture
        def f(m):
            note("setup f")
            yield
            note("teardown f")

        def process_one(f):
            note("call")
        """,
    )
    passes(project.run(), 1)
    assert events() == [
        "setup s",
        "setup m",
        "setup f",
        "call",
        "teardown f",
        "teardown m",
        "teardown s",
    ]


def test_deterministic_fixture_collection(project, events):
    """Two runs resolve and order fixtures identically."""
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(scope="module", autouse=True)
        def b():
            note("b")

        @ingestkit.fixture(scope="module", autouse=True)
        def a():
            note("a")

        @ingestkit.fixture(autouse=True)
        def c():
            note("c")

        def process_it():
            pass
        """,
    )
    passes(project.run(), 1)
    first = events()
    passes(project.run(), 1)
    assert first[2] == "c"  # wider first; the same order on every run
    assert sorted(first[:2]) == ["a", "b"]
    assert events() == first + first


def test_override_via_intermediate_fixture(project):
    """An override reaching the outer definition through another fixture is not a cycle."""
    project.write(
        "conftest.py", "import ingestkit\n\n@ingestkit.fixture\ndef app():\n    return 'outer'\n"
    )
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def intermediate(app):
            return app + "+intermediate"

        @ingestkit.fixture
        def app(intermediate):
            return intermediate + "+inner"

        def process_app(app):
            assert app == "outer+intermediate+inner", app
        """,
    )
    passes(project.run(), 1)


def test_override_via_intermediate_fixture_wider_scopes(project):
    project.write(
        "conftest.py",
        "import ingestkit\n\n@ingestkit.fixture(scope='batch')\ndef app():\n    return ['outer']\n",
    )
    project.write(
        "sub/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture(scope='batch')\ndef intermediate(app):\n"
        "    return app + ['mid']\n",
    )
    project.write(
        "sub/ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="module")
        def app(intermediate):
            return intermediate + ["inner"]

        def process_app(app):
            assert app == ["outer", "mid", "inner"], app
        """,
    )
    passes(project.run(), 1)


# -- ingestkit.skip() in a fixture (pytest: pytest.skip in a fixture) -------------


@pytest.mark.parametrize("scope", ["item", "processor", "module", "batch"])
def test_skip_inside_fixture_skips_items(project, scope):
    project.write(
        "ingest_a.py",
        f"""
        import ingestkit

        @ingestkit.fixture(scope="{scope}")
        def needs_service():
            ingestkit.skip("service not available")

        @ingestkit.source([{{"id": 1}}, {{"id": 2}}], key="id")
        def process_it(record, needs_service):
            raise AssertionError("never called")
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert result.statuses() == {"1": "skipped", "2": "skipped"}
    assert {i["error_message"] for i in result.items} == {"service not available"}
    again = project.run("--lf")
    assert again.exit_code == 0, again.output
    assert "nothing to rerun" in again.output


def test_skip_inside_generator_fixture_and_autouse(project):
    project.write(
        "conftest.py",
        """
        import ingestkit

        @ingestkit.fixture(autouse=True)
        def guard(record):
            if record["id"] == 2:
                ingestkit.skip("two is skipped")
            yield
        """,
    )
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
        def process_it(record, db):
            db.execute("CREATE TABLE IF NOT EXISTS t (id int)")
            db.execute("INSERT INTO t VALUES (%s)", (record["id"],))
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert result.statuses() == {"1": "succeeded", "2": "skipped", "3": "succeeded"}
    assert [r["id"] for r in result.query("SELECT id FROM t ORDER BY id")] == [1, 3]


# -- TestErrors --------------------------------------------------------------


def test_subfactory_missing_funcarg(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture()
        def gen(qwe123):
            return 1

        def process_something(gen):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    message = messages(result)["process_something"]
    assert message.startswith("fixture 'qwe123' not found"), message
    assert "ingest_a.py:4: def gen(qwe123)" in message, message


def test_issue498_fixture_finalizer_failing(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture
        def fix1(request):
            def f():
                raise KeyError
            request.addfinalizer(f)
            return object()

        def process_1(fix1):
            values.append(fix1)

        def process_2(fix1):
            values.append(fix1)

        def process_3():
            assert len(values) == 2
            assert values[0] is not values[1]
        """,
    )
    result = project.run()
    assert statuses(result) == {
        "process_1": "error",
        "process_2": "error",
        "process_3": "succeeded",
    }
    assert result.exit_code == 1


def test_setupfunc_missing_funcarg(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(autouse=True)
        def gen(qwe123):
            return 1

        def process_something():
            pass
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_something": "error"}
    message = messages(result)["process_something"]
    assert message.startswith("fixture 'qwe123' not found"), message
    assert "def gen(qwe123)" in message


# -- TestContextManagerFixtureFuncs ------------------------------------------


def test_yield_simple(project, events):
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture
        def arg1():
            note("setup")
            yield 1
            note("teardown")

        def process_1(arg1):
            note("test1", arg1)

        def process_2(arg1):
            note("test2", arg1)
            assert 0
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_1": "succeeded", "process_2": "failed"}
    assert events() == ["setup", "test1 1", "teardown", "setup", "test2 1", "teardown"]


def test_yield_scoped(project, events):
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(scope="module")
        def arg1():
            note("setup")
            yield 1
            note("teardown")

        def process_1(arg1):
            note("test1", arg1)

        def process_2(arg1):
            note("test2", arg1)
        """,
    )
    passes(project.run(), 2)
    assert events() == ["setup", "test1 1", "test2 1", "teardown"]


def test_yield_setup_exception(project, events):
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(scope="module")
        def arg1():
            raise ValueError("setup broke")
            yield 1

        def process_1(arg1):
            note("never")
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_1": "error"}
    assert messages(result)["process_1"] == "setup broke"
    assert events() == []


def test_yield_teardown_exception(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="module")
        def arg1():
            yield 1
            raise ValueError("teardown broke")

        def process_1(arg1):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert statuses(result) == {"process_1": "succeeded"}
    assert "module-scoped fixture teardown: ValueError: teardown broke" in result.output


def test_yields_more_than_one(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="module")
        def arg1():
            yield 1
            yield 2

        def process_1(arg1):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert "fixture 'arg1' yielded more than once (ingest_a.py:4)" in result.output, result.output


def test_yields_more_than_one_item_scope(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def arg1():
            yield 1
            yield 2

        def process_1(arg1):
            pass
        """,
    )
    result = project.run()
    assert statuses(result) == {"process_1": "error"}
    assert messages(result)["process_1"] == "fixture 'arg1' yielded more than once (ingest_a.py:4)"


def test_custom_name(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(name="meow")
        def arg1():
            return "mew"

        def process_1(meow):
            assert meow == "mew"
        """,
    )
    passes(project.run(), 1)


# -- fixture names and decorators -----------------------------------------------


def test_fixture_named_request(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def request():
            return "mine"

        def process_it(request):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert "ERROR collecting ingest_a.py" in result.output
    assert "'request' is a reserved fixture name, use another name" in result.output, result.output
    assert "ingest_a.py:4" in result.output, result.output


def test_fixture_named_request_by_name_argument(project):
    project.write(
        "conftest.py",
        "import ingestkit\n\n@ingestkit.fixture(name='request')\ndef mine():\n    return 1\n",
    )
    project.write("ingest_a.py", "def process_it():\n    pass\n")
    result = project.run()
    assert result.exit_code == 1
    assert "'request' is a reserved fixture name, use another name" in result.output, result.output


def test_fixture_double_decorator(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        @ingestkit.fixture
        def fixt():
            pass

        def process_it(fixt):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert "ERROR collecting ingest_a.py" in result.output
    assert "@ingestkit.fixture is applied more than once to fixture 'fixt'" in result.output, (
        result.output
    )


def test_fixture_duplicated_arguments(project):
    """The same fixture requested twice (directly and through another) is set up once."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        calls = []

        @ingestkit.fixture
        def base():
            calls.append(1)
            return object()

        @ingestkit.fixture
        def user(base):
            return base

        def process_it(base, user):
            assert base is user
            assert calls == [1]
        """,
    )
    passes(project.run(), 1)


def test_call_fixture_function_directly(project):
    """Deliberate difference: pytest forbids calling a fixture function; ingestkit allows it."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def fix():
            return 1

        def process_it():
            assert fix() == 1
        """,
    )
    passes(project.run(), 1)


# -- TestShowFixtures --------------------------------------------------------


def test_show_fixtures_builtins(project):
    project.write("ingest_a.py", "def process_it():\n    pass\n")
    result = project.run("--fixtures")
    assert result.exit_code == 0
    for name in ("batch", "config", "db", "item", "log", "lookup", "record", "request"):
        assert re.search(rf"^{name}( \[batch scope\])? -- ingestkit/", result.output, re.M), name


def test_show_fixtures_testmodule_hides_private_and_gives_def_line(project):
    project.write(
        "ingest_a.py",
        '''
        import ingestkit

        @ingestkit.fixture
        def _arg0():
            """hidden"""

        @ingestkit.fixture(
            scope="module",
        )
        def arg1():
            """hello world"""
        ''',
    )
    result = project.run("--fixtures")
    assert result.exit_code == 0, result.output
    assert "_arg0" not in result.output
    assert "arg1 [module scope] -- ingest_a.py:10\n    hello world" in result.output, result.output
    verbose = project.run("--fixtures", "-v")
    assert "_arg0 -- ingest_a.py:4\n    hidden" in verbose.output, verbose.output


def test_show_fixtures_conftest_without_processors(project):
    project.write(
        "sub/conftest.py",
        '''
        import ingestkit

        @ingestkit.fixture
        def arg1():
            """hello world"""
        ''',
    )
    result = project.run("--fixtures", "sub")
    assert "arg1 -- sub/conftest.py:4\n    hello world" in result.output, result.output


def test_show_fixtures_file_without_processors(project):
    project.write(
        "ingest_helpers.py",
        '''
        import ingestkit

        @ingestkit.fixture
        def helper():
            """shared helper"""
        ''',
    )
    result = project.run("--fixtures")
    assert "helper -- ingest_helpers.py:4\n    shared helper" in result.output, result.output


def test_show_fixtures_trimmed_doc(project):
    """Deliberate difference: only the first docstring line is shown (pytest: all of it)."""
    project.write(
        "ingest_a.py",
        '''
        import ingestkit

        @ingestkit.fixture
        def arg2():
            """
            line1
            line2
            """
        ''',
    )
    result = project.run("--fixtures")
    assert "arg2 -- ingest_a.py:4\n    line1\n" in result.output, result.output
    assert "line2" not in result.output


def test_show_fixtures_with_same_name(project):
    project.write(
        "conftest.py",
        "import ingestkit\n\n@ingestkit.fixture\ndef arg1():\n"
        '    """Hello World in conftest.py"""\n',
    )
    project.write(
        "ingest_a.py",
        'import ingestkit\n\n@ingestkit.fixture\ndef arg1():\n    """Hi from ingest_a"""\n\n'
        "def process_it(arg1):\n    pass\n",
    )
    result = project.run("--fixtures")
    assert "arg1 -- conftest.py:4\n    Hello World in conftest.py" in result.output, result.output
    assert "arg1 -- ingest_a.py:4\n    Hi from ingest_a" in result.output, result.output


def test_show_fixtures_different_files(project):
    project.write(
        "ingest_a.py",
        'import ingestkit\n\n@ingestkit.fixture\ndef fix_a():\n    """Fixture A"""\n\n'
        "def process_a(fix_a):\n    pass\n",
    )
    project.write(
        "ingest_b.py",
        'import ingestkit\n\n@ingestkit.fixture\ndef fix_b():\n    """Fixture B"""\n\n'
        "def process_b(fix_b):\n    pass\n",
    )
    result = project.run("--fixtures")
    assert "fix_a -- ingest_a.py:4\n    Fixture A" in result.output
    assert "fix_b -- ingest_b.py:4\n    Fixture B" in result.output


# -- more of TestFillFixtures, TestAutouseManagement, TestFixtureMarker, TestScopeOrdering --


def test_override_autouse_fixture_with_plain_fixture_conftest_conftest(project, events):
    """#1601: an autouse name overridden without autouse is still used, in its new definition."""
    project.write_noted(
        "conftest.py",
        "@ingestkit.fixture(autouse=True)\ndef spam():\n    note('outer spam')\n",
    )
    project.write_noted(
        "sub/conftest.py", "@ingestkit.fixture\ndef spam():\n    note('inner spam')\n"
    )
    project.write("sub/ingest_a.py", "def process_a():\n    pass\n")
    project.write("ingest_b.py", "def process_b():\n    pass\n")
    passes(project.run(), 2)
    assert events() == ["outer spam", "inner spam"]


def test_fixture_scope_sibling_conftests(project):
    """A batch fixture of one directory's conftest.py is not visible in a sibling directory."""
    project.write(
        "foo/conftest.py",
        "import ingestkit\n\n@ingestkit.fixture(scope='batch')\ndef fix():\n    return [1]\n",
    )
    project.write("foo/ingest_foo.py", "def process_foo(fix):\n    assert fix == [1]\n")
    project.write("food/ingest_food.py", "def process_food(fix):\n    pass\n")
    result = project.run()
    assert statuses(result) == {"process_foo": "succeeded", "process_food": "error"}
    assert messages(result)["process_food"].startswith("fixture 'fix' not found")


def test_getfixturevalue_dynamic(project):
    """pytest's fixtures/test_getfixturevalue_dynamic.py: a fixture chosen at setup time."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def dynamic():
            pass

        @ingestkit.fixture
        def a(request):
            request.getfixturevalue("dynamic")

        @ingestkit.fixture
        def b(a):
            pass

        def process_b(b, request):
            assert request.getfixturevalue("dynamic") is None
        """,
    )
    passes(project.run(), 1)


def test_fixture_arg_ordering(project):
    """Fixtures of the same scope set up in the order the processor names them."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        order = []

        @ingestkit.fixture
        def fix1():
            order.append("fix1")

        @ingestkit.fixture
        def fix2():
            order.append("fix2")

        @ingestkit.fixture
        def fix3():
            order.append("fix3")

        def process_order(fix2, fix3, fix1):
            assert order == ["fix2", "fix3", "fix1"], order
        """,
    )
    passes(project.run(), 1)


def test_processor_scope_finalizer_runs_after_its_last_item(project, events):
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(scope="processor")
        def per_proc(request):
            note("setup", request.nodeid)
            request.addfinalizer(lambda: note("fin", request.nodeid))

        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_x(record, per_proc):
            note("call", record["id"])

        def process_y(per_proc):
            note("call y")
        """,
    )
    passes(project.run(), 3)
    assert events() == [
        "setup ingest_a.py::process_x",
        "call 1",
        "call 2",
        "fin ingest_a.py::process_x",
        "setup ingest_a.py::process_y",
        "call y",
        "fin ingest_a.py::process_y",
    ]


def test_scope_batch_exc_two_fix(project):
    """A failing batch fixture does not stop another from being set up."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []
        m = []

        @ingestkit.fixture(scope="batch")
        def a():
            values.append(1)
            raise RuntimeError("a broke")

        @ingestkit.fixture
        def b(a):
            m.append(1)

        def process_1(b):
            pass

        def process_2(b):
            pass

        def process_last():
            assert values == [1]
            assert m == []
        """,
    )
    result = project.run()
    assert statuses(result) == {
        "process_1": "error",
        "process_2": "error",
        "process_last": "succeeded",
    }


def test_batch_fixture_teardown_error_keeps_items(project, events):
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(scope="batch")
        def res(db):
            db.execute("CREATE TABLE t (id int)")
            yield
            raise RuntimeError("cleanup failed")

        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_x(record, res, db):
            db.execute("INSERT INTO t VALUES (%s)", (record["id"],))
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert result.statuses() == {"1": "succeeded", "2": "succeeded"}
    assert [r["id"] for r in result.query("SELECT id FROM t ORDER BY id")] == [1, 2]
    assert "batch-scoped fixture teardown: RuntimeError: cleanup failed" in result.output


def test_autouse_fixture_of_module_not_used_by_other_module(project, events):
    """TestAutouseDiscovery::test_autouse_in_module_and_two_classes, by modules."""
    project.write_noted(
        "ingest_a.py",
        "@ingestkit.fixture(autouse=True)\ndef append1():\n    note('a autouse')\n\n"
        "def process_a():\n    pass\n",
    )
    project.write("ingest_b.py", "def process_b():\n    pass\n")
    passes(project.run(), 2)
    assert events() == ["a autouse"]


def test_request_in_processor(project):
    """A processor may request ``request``; its getfixturevalue sees the processor's fixtures."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture
        def local():
            return "local"

        def process_a(request):
            assert request.nodeid == "ingest_a.py::process_a[]"
            assert request.fixturename is None
            assert request.getfixturevalue("local") == "local"
        """,
    )
    passes(project.run(), 1)


def test_item_fixture_writes_roll_back_with_a_skip(project):
    """A skip in an item fixture after it wrote: the item's writes are gone, end to end."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="batch", autouse=True)
        def table(db):
            db.execute("CREATE TABLE IF NOT EXISTS t (id int)")

        @ingestkit.fixture
        def guard(record, db):
            db.execute("INSERT INTO t VALUES (%s)", (-record["id"],))
            if record["id"] % 2 == 0:
                ingestkit.skip("even")

        @ingestkit.source([{"id": i} for i in range(1, 7)], key="id")
        def process_x(record, guard, db):
            db.insert("t", {"id": record["id"]})
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert result.counts == {"succeeded": 3, "skipped": 3}
    rows = sorted(r["id"] for r in result.query("SELECT id FROM t"))
    assert rows == [-5, -3, -1, 1, 3, 5]
    assert len(result.items) == 6  # every record of the source has its outcome


def test_scope_ordering(project):
    """TestAutouseManagement::test_scope_ordering: module, then processor, then item autouse."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture(autouse=True)
        def fappend2():
            values.append(2)

        @ingestkit.fixture(scope="processor", autouse=True)
        def classappend3():
            values.append(3)

        @ingestkit.fixture(scope="module", autouse=True)
        def mappend():
            values.append(1)

        def process_method():
            assert values == [1, 3, 2], values
        """,
    )
    passes(project.run(), 1)


def test_ordering_autouse_before_explicit(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture(autouse=True)
        def fix1():
            values.append(1)

        @ingestkit.fixture()
        def arg1():
            values.append(2)

        def process_hello(arg1):
            assert values == [1, 2]
        """,
    )
    passes(project.run(), 1)


def test_ordering_dependencies_torndown_first(project):
    """#226: a fixture is torn down before the fixtures it depends on."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []

        @ingestkit.fixture
        def arg1(request):
            request.addfinalizer(lambda: values.append("fin1"))
            values.append("new1")

        @ingestkit.fixture
        def arg2(request, arg1):
            request.addfinalizer(lambda: values.append("fin2"))
            values.append("new2")

        def process_arg(arg2):
            pass

        def process_check():
            assert values == ["new1", "new2", "fin2", "fin1"]
        """,
    )
    passes(project.run(), 2)


@pytest.mark.parametrize("scope", ["batch", "item", "module"])
def test_finalizer_order_on_dependencies(project, scope):
    """#246 (without its parametrisation): base is not finalized before fix2, which uses it."""
    project.write(
        "ingest_a.py",
        f"""
        import ingestkit

        values = []

        @ingestkit.fixture(scope="{scope}")
        def fix1(request):
            return "1"

        @ingestkit.fixture(scope="{scope}")
        def fix2(request, base):
            def cleanup_fix2():
                assert not values, "base should not have been finalized"
            request.addfinalizer(cleanup_fix2)

        @ingestkit.fixture(scope="{scope}")
        def base(request, fix1):
            def cleanup_base():
                values.append("fin_base")
            request.addfinalizer(cleanup_base)

        def process_begin():
            pass

        def process_baz(base, fix2):
            pass

        def process_other():
            pass
        """,
    )
    passes(project.run(), 3)


def test_processor_scope_with_normal_processors(project):
    """test_class_scope_with_normal_tests: each processor gets its own processor-scoped value."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        class Box:
            value = 0

        @ingestkit.fixture(scope="processor")
        def a(request):
            Box.value += 1
            return Box.value

        def process_a(a):
            assert a == 1

        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_b(record, a):
            assert a == 2

        def process_c(a):
            assert a == 3
        """,
    )
    passes(project.run(), 4)


def test_cached_exception_doesnt_get_longer(project):
    """#12204: a failed batch fixture's traceback is the same for every item that needs it."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(scope="batch")
        def bad():
            1 / 0

        def process_1(bad): pass
        def process_2(bad): pass
        def process_3(bad): pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    tracebacks = [i["traceback"] for i in result.items]
    assert len(tracebacks) == 3 and all(tracebacks), tracebacks
    assert tracebacks[1] == tracebacks[2] == tracebacks[0]


def test_scope_exc_skip_in_conftest_batch_fixture(project):
    """test_scope_exc: a batch fixture that skips, used from two files: set up once, both skip."""
    project.write(
        "conftest.py",
        """
        import ingestkit

        reqs = []

        @ingestkit.fixture(scope="batch")
        def fix(request):
            reqs.append(1)
            ingestkit.skip("no service")

        @ingestkit.fixture
        def req_list():
            return reqs
        """,
    )
    project.write("ingest_foo.py", "def process_foo(fix):\n    pass\n")
    project.write("ingest_bar.py", "def process_bar(fix):\n    pass\n")
    project.write("ingest_real.py", "def process_last(req_list):\n    assert req_list == [1]\n")
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert statuses(result) == {
        "process_bar": "skipped",
        "process_foo": "skipped",
        "process_last": "succeeded",
    }


def test_scope_batch_exc_two_fix_skip(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        values = []
        m = []

        @ingestkit.fixture(scope="batch")
        def a():
            values.append(1)
            ingestkit.skip("skipping")

        @ingestkit.fixture(scope="batch")
        def b(a):
            m.append(1)

        def process_1(b):
            pass

        def process_2(b):
            pass

        def process_last():
            assert values == [1]
            assert m == []
        """,
    )
    result = project.run()
    assert result.exit_code == 0, ok(result)
    assert result.counts == {"skipped": 2, "succeeded": 1}


def test_class_fixture_self_instance(project):
    """#2270: a fixture method of a plugin object registered in a conftest receives the instance."""
    project.write(
        "conftest.py",
        """
        import ingestkit

        def ingestkit_configure(config):
            config.pluginmanager.register(MyPlugin())

        class MyPlugin:
            def __init__(self):
                self.arg = 1

            @ingestkit.fixture
            def myfix(self):
                assert isinstance(self, MyPlugin)
                return self.arg
        """,
    )
    project.write("ingest_a.py", "def process_1(myfix):\n    assert myfix == 1\n")
    passes(project.run(), 1)


def test_fixture_arg_ordering_through_combined(project):
    """#6540, #6492: arguments of one fixture are set up in their order."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        suffixes = []

        @ingestkit.fixture
        def fix_1(): suffixes.append("fix_1")
        @ingestkit.fixture
        def fix_2(): suffixes.append("fix_2")
        @ingestkit.fixture
        def fix_3(): suffixes.append("fix_3")
        @ingestkit.fixture
        def fix_4(): suffixes.append("fix_4")
        @ingestkit.fixture
        def fix_5(): suffixes.append("fix_5")

        @ingestkit.fixture
        def fix_combined(fix_1, fix_2, fix_3, fix_4, fix_5): pass

        def process_suffix(fix_combined):
            assert suffixes == ["fix_1", "fix_2", "fix_3", "fix_4", "fix_5"]
        """,
    )
    passes(project.run(), 1)


def test_yield_fixture_with_no_value(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        @ingestkit.fixture(name="custom")
        def empty_yield():
            if False:
                yield

        def process_fixt(custom):
            pass
        """,
    )
    result = project.run()
    assert result.exit_code == 1
    assert statuses(result) == {"process_fixt": "error"}
    assert (
        messages(result)["process_fixt"] == "fixture 'custom' did not yield a value (ingest_a.py:4)"
    )


def test_scoped_fixture_caching(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        executed = []

        @ingestkit.fixture(scope="processor")
        def fixture_1():
            executed.append("fix setup")
            yield
            executed.append("fix teardown")

        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_caching(record, fixture_1):
            assert executed == ["fix setup"]

        def process_expected_setup_and_teardown():
            assert executed == ["fix setup", "fix teardown"]
        """,
    )
    passes(project.run(), 3)


def test_scoped_fixture_caching_exception(project):
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        executed_crash = []

        @ingestkit.fixture(scope="processor")
        def fixture_crash(request):
            executed_crash.append("fix_crash setup")
            request.addfinalizer(lambda: executed_crash.append("fix_crash teardown"))
            raise Exception("foo")

        @ingestkit.source([{"id": 1}, {"id": 2}], key="id")
        def process_crash(record, fixture_crash):
            pass

        def process_crash_expected_setup_and_teardown():
            assert executed_crash == ["fix_crash setup", "fix_crash teardown"]
        """,
    )
    result = project.run()
    assert statuses(result) == {
        "process_crash": "error",
        "process_crash_expected_setup_and_teardown": "succeeded",
    }, ok(result)
    assert result.counts == {"error": 2, "succeeded": 1}


def test_scoped_fixture_teardown_order(project):
    """#1489: a later processor using a subset of module fixtures keeps the teardown order."""
    project.write(
        "ingest_a.py",
        """
        import ingestkit

        last_executed = ""

        @ingestkit.fixture(scope="module")
        def fixture_1():
            global last_executed
            assert last_executed == ""
            last_executed = "fixture_1_setup"
            yield
            assert last_executed == "fixture_2_teardown"
            last_executed = "fixture_1_teardown"

        @ingestkit.fixture(scope="module")
        def fixture_2():
            global last_executed
            assert last_executed == "fixture_1_setup"
            last_executed = "fixture_2_setup"
            yield
            assert last_executed == "run_test"
            last_executed = "fixture_2_teardown"

        def process_fixture_teardown_order(fixture_1, fixture_2):
            global last_executed
            assert last_executed == "fixture_2_setup"
            last_executed = "run_test"

        def process_2(fixture_1):
            pass
        """,
    )
    result = project.run()
    passes(result, 2)
    assert "TEARDOWN" not in result.output


def test_subfixture_teardown_order(project, events):
    """#12135: fixtures sharing a dependency are torn down in reverse setup order, once."""
    project.write_noted(
        "ingest_a.py",
        """
        @ingestkit.fixture(scope="module")
        def fixture_1():
            pass

        @ingestkit.fixture(scope="module")
        def fixture_2(fixture_1):
            note("setup 2")
            yield
            note("teardown 2")

        @ingestkit.fixture(scope="module")
        def fixture_3(fixture_1):
            note("setup 3")
            yield
            note("teardown 3")

        def process_initialize_fixtures(fixture_2, fixture_3):
            pass

        def process_reschedule_fixture_2(fixture_2):
            pass
        """,
    )
    passes(project.run(), 2)
    assert events() == ["setup 2", "setup 3", "teardown 3", "teardown 2"]
