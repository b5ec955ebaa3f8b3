"""§5: plugins. The example plugin installed as a package, conftest hooks, ``-p no:NAME``.

The webhook tests install ``examples/plugins/ingestkit-webhook`` into a venv of
their own (never into the environment running these tests, whose in-process
runs would all load it) and run ``python -m ingestkit`` from that venv. HTTP
goes only to a server on 127.0.0.1 that the tests start.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import ingestkit

PLUGIN_SRC = Path(__file__).parent.parent / "examples" / "plugins" / "ingestkit-webhook"

ROWS = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")

@ingestkit.source([{"id": i} for i in range(1, 11)], key="id")
def process_row(record, db):
    if record["id"] in (3, 6, 9):
        raise ValueError(f"bad row {record['id']}")
    db.insert("t", record)

def process_once():
    pass
"""


# -- a local HTTP server --------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: LocalServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.requests.append(self.path)
        status, body = self.server.pages.get(self.path, (404, b"not found"))
        self._answer(status, body)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append((self.path, dict(self.headers), body))
        time.sleep(self.server.post_delay)
        self._answer(self.server.post_status, b"{}")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class LocalServer(http.server.ThreadingHTTPServer):
    """Serves ``pages`` ({path: (status, body)}) and records every POST."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.pages: dict[str, tuple[int, bytes]] = {}
        self.requests: list[str] = []
        self.posts: list[tuple[str, dict, bytes]] = []
        self.post_status = 200
        self.post_delay = 0.0

    def summaries(self) -> list[dict]:
        return [json.loads(body) for _, _, body in self.posts]


@pytest.fixture
def server(monkeypatch):
    # urllib honours http_proxy & co: make sure 127.0.0.1 is never sent through one
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = LocalServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    thread.join()
    srv.server_close()


def _free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the plugin installed as a package into a venv of its own --------------------


def _can_build_offline() -> bool:
    """Whether setuptools here can build a wheel without fetching anything."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) >= (70, 1)  # bdist_wheel built in since 70.1


class Venv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"

    def run(self, project, *args: str) -> subprocess.CompletedProcess:
        """``python -m ingestkit`` from the venv, as a user with the plugin installed runs it."""
        return subprocess.run(
            [str(self.python), "-m", "ingestkit", "--dsn", project.dsn, *args],
            cwd=project.root,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    """A venv with ingestkit-webhook pip-installed from its pyproject.toml.

    ingestkit and its dependencies come from the environment running the tests:
    a ``.pth`` file adds its site-packages (with their own ``.pth`` files, so an
    editable ingestkit works too). The plugin is built from a copy of its folder,
    so that setuptools' build files never land in the repository.
    """
    tmp = tmp_path_factory.mktemp("webhook-venv")
    env = Venv(tmp / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env.root)], check=True)
    purelib = subprocess.run(
        [str(env.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    parents = [p for p in site.getsitepackages() if os.path.isdir(p)]
    (Path(purelib) / "_ingestkit_tests_parent.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    )
    source = shutil.copytree(PLUGIN_SRC, tmp / "src", ignore=shutil.ignore_patterns("build"))
    pip = [str(env.python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    pip += ["--no-deps", str(source)]
    # offline when the setuptools here can build wheels; else pip fetches the build
    # backend into an isolated build environment (from the package index)
    attempts = [[*pip, "--no-index", "--no-build-isolation"]] if _can_build_offline() else []
    attempts.append(pip)
    outputs = []
    for argv in attempts:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            break
        outputs.append(proc.stdout + proc.stderr)
    else:
        pytest.fail("could not pip-install the example plugin:\n" + "\n".join(outputs))
    check = subprocess.run(
        [
            str(env.python),
            "-c",
            "import ingestkit, ingestkit_webhook; "
            "print(ingestkit.__file__); print(ingestkit_webhook.__file__)",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert check[0] == ingestkit.__file__  # the ingestkit under test
    assert check[1].startswith(purelib)  # the installed plugin, not the example folder
    return env


def test_installed_plugin_posts_the_batch_summary(project, server, venv):
    dist = next(Path(venv.root).glob("lib/python*/site-packages/ingestkit_webhook-*.dist-info"))
    assert "webhook = ingestkit_webhook" in (dist / "entry_points.txt").read_text()
    assert "Requires-Dist: ingestkit" in (dist / "METADATA").read_text()

    project.write("ingest_rows.py", ROWS)
    proc = venv.run(project, "--webhook-url", server.url + "/hook")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert "--webhook-url" in venv.run(project, "--help").stdout

    [(path, headers, _)] = server.posts
    assert (path, headers["Content-Type"]) == ("/hook", "application/json")
    assert headers["User-Agent"].startswith("ingestkit-webhook/")
    [summary] = server.summaries()
    batch = project.query("SELECT * FROM ingestkit.batches")[0]
    items = project.query("SELECT processor, status FROM ingestkit.items")
    assert summary == {
        "batch_id": str(batch["id"]),
        "status": "finished",
        "exit_code": 1,
        "counts": batch["counts"],
        "processors": {
            "ingest_rows.py::process_row": {"succeeded": 7, "failed": 3},
            "ingest_rows.py::process_once": {"succeeded": 1},
        },
    }
    assert {k: v for k, v in summary["counts"].items() if v} == Counter(i["status"] for i in items)
    for nodeid, counts in summary["processors"].items():
        assert counts == Counter(i["status"] for i in items if i["processor"] == nodeid)

    # the config key does the same; a second run counts what it left unchanged
    project.write("ingestkit.toml", f'webhook_url = "{server.url}/from-config"\n')
    proc = venv.run(project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert server.posts[1][0] == "/from-config"
    second = server.summaries()[1]
    assert second["batch_id"] != summary["batch_id"]
    assert second["counts"] == {
        "succeeded": 1,
        "failed": 3,
        "error": 0,
        "skipped": 0,
        "unchanged": 7,
    }
    assert second["processors"]["ingest_rows.py::process_row"] == {"failed": 3, "unchanged": 7}

    # under -n the plugin loads in every worker too, and the leader alone posts
    proc = venv.run(project, "-n", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(server.posts) == 3
    assert server.summaries()[2]["processors"] == second["processors"]

    # a POST that fails: one line on stderr, the same exit code
    refused = f"http://127.0.0.1:{_free_port()}/hook"
    proc = venv.run(project, "-q", "--webhook-url", refused)
    assert proc.returncode == 1
    [warning] = proc.stderr.splitlines()
    assert warning.startswith(
        f"WARNING: ingestkit-webhook: could not POST the batch summary to {refused}: "
    )
    assert "ingestkit-webhook" not in proc.stdout


def test_hook_arguments_are_of_the_public_types(project):
    import ingestkit

    seen = []

    class Checker:
        @ingestkit.hookimpl
        def ingestkit_processor_start(self, processor, session):
            seen.append(isinstance(processor, ingestkit.Processor))
            seen.append(isinstance(session, ingestkit.Session))
            seen.append(isinstance(session.config, ingestkit.Config))
            seen.append(
                processor.source is None or isinstance(processor.source, ingestkit.SourceSpec)
            )

        @ingestkit.hookimpl
        def ingestkit_chunk_finish(self, chunk):
            seen.append(isinstance(chunk, ingestkit.Chunk))
            seen.append(all(isinstance(r, ingestkit.ItemReport) for r in chunk.reports))

        @ingestkit.hookimpl
        def ingestkit_runtest_setup(self, item):
            seen.append(isinstance(item, ingestkit.Item))

    project.write("ingest_rows.py", ROWS)
    result = project.run(plugins=[Checker()])
    assert result.exit_code == ingestkit.ExitCode.ITEMS_FAILED
    assert seen and all(seen)


def test_blocking_the_installed_plugin_with_p_no_webhook(project, server, venv):
    project.write("ingest_rows.py", ROWS)
    blocked = venv.run(project, "-p", "no:webhook")
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert "--webhook-url" not in venv.run(project, "-p", "no:webhook", "--help").stdout
    # its option is then unknown: a usage error, before any batch
    with_url = venv.run(project, "-p", "no:webhook", "--webhook-url", server.url + "/hook")
    assert with_url.returncode == 4
    assert with_url.stderr.strip() == "ERROR: unrecognized arguments: --webhook-url"
    # and so is its config key, which cannot stay in the config file for such a run
    project.write("ingestkit.toml", f'webhook_url = "{server.url}/hook"\n')
    with_key = venv.run(project, "-p", "no:webhook")
    assert with_key.returncode == 4
    assert "unknown config key(s): webhook_url" in with_key.stderr
    assert server.posts == []
    assert len(project.query("SELECT id FROM ingestkit.batches")) == 1


def test_without_the_plugin_webhook_url_is_a_usage_error(project, server):
    project.write("ingest_rows.py", ROWS)
    result = project.run("--webhook-url", server.url + "/hook")
    assert result.exit_code == 4
    assert "unrecognized arguments: --webhook-url" in result.output
    assert result.batch is None
    assert server.posts == []


# -- the plugin module in-process ----------------------------------------------


@pytest.fixture
def webhook(monkeypatch):
    """The example plugin's module, importable as ``ingestkit_webhook`` for this test."""
    spec = importlib.util.spec_from_file_location(
        "ingestkit_webhook", PLUGIN_SRC / "ingestkit_webhook.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ingestkit_webhook", module)
    spec.loader.exec_module(module)
    return module


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if "ingestkit-webhook" in line]


def test_a_failed_post_is_one_warning_and_keeps_the_exit_code(project, server, webhook):
    project.write("ingest_rows.py", ROWS)
    refused = f"http://127.0.0.1:{_free_port()}/hook"
    result = project.run("--webhook-url", refused, plugins=[webhook])
    assert result.exit_code == 1
    [line] = _warnings(result.output)
    assert line.startswith(
        f"WARNING: ingestkit-webhook: could not POST the batch summary to {refused}: "
        "cannot connect: "
    )
    assert "Connection refused" in line
    assert result.batch["exit_code"] == 1

    server.post_status = 500
    result = project.run("--webhook-url", server.url + "/hook", plugins=[webhook])
    assert result.exit_code == 1
    [line] = _warnings(result.output)
    assert line.endswith("HTTP 500 Internal Server Error")

    # a server that does not answer in time; a password in the URL is not shown
    server.post_status, server.post_delay = 200, 1.0
    webhook.POST_TIMEOUT = 0.2
    project.write("ingest_rows.py", "def process_once():\n    pass\n")
    url = server.url.replace("//", "//hook-user:s3cret@") + "/slow"
    result = project.run("--webhook-url", url, plugins=[webhook])
    assert result.exit_code == 0
    assert _warnings(result.output) == [
        "WARNING: ingestkit-webhook: could not POST the batch summary to "
        f"{server.url.replace('//', '//hook-user:***@')}/slow: timed out"
    ]
    assert "s3cret" not in result.output
    # the credentials went as a Basic Authorization header
    assert server.posts[-1][1]["Authorization"] == "Basic aG9vay11c2VyOnMzY3JldA=="

    bad = project.run("--webhook-url", "ftp://example.invalid/x", plugins=[webhook])
    assert bad.exit_code == 4
    assert "webhook_url: not an http(s) URL: 'ftp://example.invalid/x'" in bad.output


def test_no_post_when_no_batch_ran(project, server, webhook):
    url = server.url + "/hook"
    assert project.run("--webhook-url", url, plugins=[webhook]).exit_code == 5
    project.write("ingest_rows.py", ROWS)
    assert project.run("--collect-only", "--webhook-url", url, plugins=[webhook]).exit_code == 0
    assert server.posts == []
    interrupted = project.run("-x", "--webhook-url", url, plugins=[webhook])
    assert interrupted.exit_code == 2
    [summary] = server.summaries()
    assert (summary["status"], summary["exit_code"]) == ("interrupted", 2)
    assert summary["processors"]["ingest_rows.py::process_once"] == {}  # never reached


PAGED = """
import ingestkit
from ingestkit_webhook import PagedAPI

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS people (id int PRIMARY KEY, name text)")

@ingestkit.source(PagedAPI("{url}/people?kind=staff"), key="id")
def process_person(record, db):
    db.insert("people", record)
"""


def _page(*ids: int) -> tuple[int, bytes]:
    return 200, json.dumps([{"id": i, "name": f"p{i}"} for i in ids]).encode()


def test_paged_api_source(project, server, webhook):
    server.pages = {
        "/people?kind=staff&page=1": _page(1, 2, 3),
        "/people?kind=staff&page=2": _page(4, 5),
        "/people?kind=staff&page=3": _page(6),
        "/people?kind=staff&page=4": (200, b"[]"),
    }
    project.write("ingest_people.py", PAGED.format(url=server.url))
    result = project.run(plugins=[webhook])
    assert result.exit_code == 0, result.output
    assert result.statuses() == {str(i): "succeeded" for i in range(1, 7)}
    assert server.requests == [f"/people?kind=staff&page={n}" for n in (1, 2, 3, 4)]
    rows = result.query("SELECT id, name FROM people ORDER BY id")
    assert rows == [{"id": i, "name": f"p{i}"} for i in range(1, 7)]

    # page 2 is broken: one error item naming its URL; page 1 runs, page 3 is never fetched
    server.requests.clear()
    server.pages["/people?kind=staff&page=1"] = _page(1, 2, 3, 7)
    server.pages["/people?kind=staff&page=2"] = (200, b'[{"id": 4}, {"id": 5')
    result = project.run(plugins=[webhook])
    assert result.exit_code == 1
    assert server.requests == ["/people?kind=staff&page=1", "/people?kind=staff&page=2"]
    assert result.counts == {"succeeded": 1, "unchanged": 3, "error": 1}
    [error] = [i for i in result.items if i["status"] == "error"]
    page2 = f"{server.url}/people?kind=staff&page=2"
    assert error["key"] == "#5"
    assert error["error_message"].startswith(f"{page2}: invalid JSON: ")
    assert error["location"] == page2
    assert result.by_key()["7"]["status"] == "succeeded"

    # a page that cannot be fetched, and one that is not an array
    server.pages["/people?kind=staff&page=2"] = (503, b"down")
    result = project.run(plugins=[webhook])
    [error] = [i for i in result.items if i["status"] == "error"]
    assert error["error_message"] == f"{page2}: HTTP 503 Service Unavailable"
    server.pages["/people?kind=staff&page=2"] = (200, b'{"items": []}')
    result = project.run(plugins=[webhook])
    [error] = [i for i in result.items if i["status"] == "error"]
    assert error["error_message"] == f"{page2}: expected a JSON array of records, got an object"


def test_paged_api_returned_by_a_source_callable_reaches_the_hook(project, server, webhook):
    server.pages = {"/p?page=1": _page(1, 2), "/p?page=2": (200, b"[]")}
    project.write(
        "ingest_people.py",
        f"""
import ingestkit
from ingestkit_webhook import PagedAPI

@ingestkit.fixture(scope="batch")
def api_url():
    return "{server.url}/p"

@ingestkit.source(lambda api_url: PagedAPI(api_url), key="id")
def process_person(record):
    pass
""",
    )
    result = project.run(plugins=[webhook])
    assert result.exit_code == 0, result.output
    assert result.statuses() == {"1": "succeeded", "2": "succeeded"}
    # the hook sees the PagedAPI the callable made: a bad page is one error entry
    server.pages["/p?page=1"] = _page(1, 2)
    server.pages["/p?page=2"] = (200, b"not json")
    result = project.run("--reprocess", plugins=[webhook])
    assert result.exit_code == 1
    errors = [i for i in result.items if i["status"] == "error"]
    assert [i["status"] for i in result.items if i["key"] in ("1", "2")] == ["succeeded"] * 2
    [error] = errors
    assert f"{server.url}/p?page=2: invalid JSON" in error["error_message"]


# -- conftest.py hooks and blocking built-in plugins ------------------------------

CONFTEST = """
import ingestkit

@ingestkit.hookimpl
def ingestkit_runtest_logreport(report):
    with open("reports.log", "a") as f:
        f.write(f"{report.nodeid} {report.status}\\n")

@ingestkit.hookimpl
def ingestkit_report_header(config):
    return "from conftest: header"

@ingestkit.hookimpl
def ingestkit_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line(f"from conftest: exit status {exitstatus}")
"""


def test_conftest_implements_hooks(project):
    project.write("conftest.py", CONFTEST)
    project.write("ingest_rows.py", ROWS)
    result = project.run()
    assert result.exit_code == 1
    lines = (project.root / "reports.log").read_text().splitlines()
    assert sorted(lines) == sorted(
        f"{i['processor']}[{i['key']}] {i['status']}" for i in result.items
    )
    assert len(lines) == 11
    assert "from conftest: header" in result.output
    assert "from conftest: exit status 1" in result.output


def test_p_no_terminal_silences_the_reporter_but_records_everything(project):
    project.write("conftest.py", CONFTEST)
    project.write("ingest_rows.py", ROWS)
    result = project.run("-p", "no:terminal")
    assert result.exit_code == 1
    assert result.output == ""  # no header, progress, failures or summary
    assert result.counts == {"succeeded": 8, "failed": 3}
    assert len((project.root / "reports.log").read_text().splitlines()) == 11


def test_p_no_junitxml_makes_its_option_unknown(project, tmp_path):
    project.write("ingest_rows.py", ROWS)
    xml = tmp_path / "out.xml"
    result = project.run("-p", "no:junitxml", "--junitxml", str(xml))
    assert result.exit_code == 4
    assert "unrecognized arguments: --junitxml" in result.output
    assert not xml.exists()
    assert result.batch is None
    assert project.run("--junitxml", str(xml)).exit_code == 1
    assert xml.exists()


def test_an_observer_of_runtest_call_does_not_replace_the_processor(project):
    """A plugin implementing ingestkit_runtest_call and returning None only observes."""
    import ingestkit

    seen = []

    class Observer:
        @ingestkit.hookimpl
        def ingestkit_runtest_call(self, item, kwargs):
            seen.append(item.key)

    class Wrapper:
        @ingestkit.hookimpl(wrapper=True)
        def ingestkit_runtest_call(self, item, kwargs):
            return (yield)

    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.source([{"id": 1}, {"id": 2}, {"id": 3}], key="id")
def process_row(record):
    if record["id"] == 3:
        raise ValueError("bad record")
""",
    )
    for plugin in (Observer(), Wrapper()):
        result = project.run("--reprocess", plugins=[plugin])
        assert result.exit_code == 1, result.output
        assert result.statuses() == {"1": "succeeded", "2": "succeeded", "3": "failed"}
    assert seen == ["1", "2", "3"]


SCOPED_CONFTEST = """
import ingestkit

def _log(line):
    with open({log!r}, "a") as f:
        f.write(line + "\\n")

@ingestkit.hookimpl
def ingestkit_processor_start(processor, session):
    _log("start " + processor.nodeid)

@ingestkit.hookimpl
def ingestkit_runtest_setup(item):
    _log("setup " + item.nodeid)

@ingestkit.hookimpl
def ingestkit_runtest_logreport(report):
    _log("report " + report.nodeid)
"""

ONE_ROW = """
import ingestkit

@ingestkit.source([{"id": 1}], key="id")
def process_row(record):
    pass
"""


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["in-process", "workers"])
def test_a_conftest_hook_applies_only_at_or_below_its_folder(project, workers):
    """As pytest scopes conftest hooks: a/conftest.py's hooks do not run for b/ingest_b.py."""
    log = project.root / "hooks.log"
    project.write("a/conftest.py", SCOPED_CONFTEST.format(log=str(log)))
    project.write("a/ingest_a.py", ONE_ROW)
    project.write("a/sub/ingest_c.py", ONE_ROW)
    project.write("b/ingest_b.py", ONE_ROW)
    result = project.cli(*workers)
    assert result.returncode == 0, result.stdout
    assert project.scalar("SELECT count(*) FROM ingestkit.items WHERE status = 'succeeded'") == 3
    lines = log.read_text().splitlines()
    kinds = {line.split()[0] for line in lines}
    assert kinds == {"start", "setup", "report"}, lines  # under -n: the leader's and workers'
    if not workers:
        assert len(lines) == 6, lines
    assert not [line for line in lines if "b/ingest_b.py" in line], lines
    assert {line.split()[1].split("::")[0] for line in lines} == {
        "a/ingest_a.py",
        "a/sub/ingest_c.py",
    }
