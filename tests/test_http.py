"""§8: ``ingestkit.read_http`` against a real HTTP server on 127.0.0.1.

Each test gives the server its pages (``api.pages[path_and_query] = ...``) or a
function answering a request, runs ingestkit on a folder of ingest files, and
counts end to end: records served = items + records behind an error item, and
rows in the target table = succeeded items.
"""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

TABLE = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, page text)")
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Api
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        api = self.server
        with api.lock:
            api.requests.append(
                (time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()})
            )
            count = api.hits[self.path] = api.hits.get(self.path, 0) + 1
        answer = api.answer(self.path, count, self)
        if answer is None:  # the handler answered (or dropped the connection) itself
            return
        status, headers, body = answer
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        headers = {"Content-Type": "application/json", **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Api(http.server.ThreadingHTTPServer):
    """A JSON API on 127.0.0.1: ``pages`` by path+query, or ``route(path, count, handler)``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.pages: dict[str, object] = {}
        self.route = None
        self.requests: list[tuple[float, str, dict]] = []
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()

    def answer(self, path: str, count: int, handler: _Handler):
        if self.route is not None:
            answer = self.route(path, count, handler)
            if answer is not False:
                return answer
        if path in self.pages:
            page = self.pages[path]
            return page if isinstance(page, tuple) else (200, {}, page)
        return (404, {}, {"error": f"no page {path}"})

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.requests]


@pytest.fixture
def api():
    server = Api()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def write_source(project, api, reader_args: str, body: str = "", extra: str = "") -> None:
    project.write(
        "ingest_api.py",
        TABLE
        + extra
        + f"""
URL = {api.url!r}

@ingestkit.source(ingestkit.read_http({reader_args}), key="id")
def process_item(record, db):
    db.insert("t", {{"id": record["id"], "page": record.get("page")}})
{body}
""",
    )


def items(project):
    return project.query("SELECT * FROM ingestkit.items ORDER BY finished_at, key")


def rows(project):
    return [r["id"] for r in project.query("SELECT id FROM t ORDER BY id")]


def check_end_to_end(project, served: int, behind_errors: int = 0) -> None:
    """Records served = items + records behind error items; rows = succeeded items."""
    recorded = items(project)
    record_items = [i for i in recorded if i["key"] != ""]
    assert len(record_items) + behind_errors == served
    succeeded = [i for i in recorded if i["status"] == "succeeded"]
    assert len(rows(project)) == len(succeeded)


# -- pagination ------------------------------------------------------------------


def test_next_url_in_the_body_and_records_at_a_path(project, api):
    api.pages["/v1/items"] = {
        "data": {"items": [{"id": 1}, {"id": 2}]},
        "links": {"next": "/v1/items?after=2"},  # relative: resolved against the page
    }
    api.pages["/v1/items?after=2"] = {
        "data": {"items": [{"id": 3}, {"id": 4}]},
        "links": {"next": api.url + "/v1/items?after=4"},
    }
    api.pages["/v1/items?after=4"] = {"data": {"items": [{"id": 5}]}, "links": {"next": None}}
    write_source(
        project,
        api,
        'URL + "/v1/items", records="data.items", next="links.next"',
        body='    if record["id"] == 4:\n        raise ValueError("four")',
    )
    result = project.run()
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 4, "failed": 1}
    assert api.paths() == ["/v1/items", "/v1/items?after=2", "/v1/items?after=4"]
    [failed] = [i for i in items(project) if i["status"] == "failed"]
    # the second record of the second page
    assert failed["location"] == f"GET {api.url}/v1/items?after=2 #2"
    assert rows(project) == [1, 2, 3, 5]
    check_end_to_end(project, served=5)


def test_link_header_pagination(project, api):
    base = api.url + "/repos"
    api.pages["/repos?per_page=2"] = (
        200,
        {"Link": f'<{base}?per_page=2&page=2>; rel="next", <{base}?per_page=2&page=3>; rel="last"'},
        [{"id": 1}, {"id": 2}],
    )
    api.pages["/repos?per_page=2&page=2"] = (
        200,
        {
            "Link": f'<{base}?per_page=2&page=1>; rel="prev first", </repos?per_page=2&page=3>; '
            'rel="next last"'
        },
        [{"id": 3}, {"id": 4}],
    )
    api.pages["/repos?per_page=2&page=3"] = (
        200,
        {"Link": f'<{base}?per_page=2&page=2>; rel="prev"'},
        [{"id": 5}],
    )
    write_source(project, api, 'URL + "/repos", params={"per_page": 2}')
    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 5}
    assert api.paths() == [
        "/repos?per_page=2",
        "/repos?per_page=2&page=2",
        "/repos?per_page=2&page=3",
    ]
    check_end_to_end(project, served=5)


def test_page_numbers_until_an_empty_page(project, api):
    def route(path, count, handler):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        page = int(query["p"][0])
        assert query["size"] == ["2"]
        records = [{"id": i} for i in range(2 * page - 1, 2 * page + 1) if i <= 5]
        return (200, {}, {"results": records})

    api.route = route
    write_source(
        project, api, 'URL + "/list", params={"size": 2}, page_param="p", records="results"'
    )
    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 5}
    assert api.paths() == [f"/list?size=2&p={n}" for n in (1, 2, 3, 4)]  # 4 is empty
    check_end_to_end(project, served=5)


def test_a_server_that_ignores_the_page_parameter_does_not_loop_forever(project, api):
    api.route = lambda path, count, handler: (200, {}, [{"id": 1}, {"id": 2}])
    write_source(project, api, 'URL + "/same", page_param="page"')
    result = project.run()
    assert result.exit_code == 1
    assert result.counts == {"succeeded": 2, "error": 1}
    [error] = [i for i in items(project) if i["status"] == "error"]
    assert "the same records as the page before" in error["error_message"]
    assert "'page'" in error["error_message"]
    assert len(api.requests) == 2


def test_cursor_pagination(project, api):
    pages = {None: ([{"id": 1}, {"id": 2}], "c2"), "c2": ([{"id": 3}], "c3"), "c3": ([], None)}

    def route(path, count, handler):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        records, following = pages[query.get("cursor", [None])[0]]
        assert query["limit"] == ["2"]
        return (200, {}, {"items": records, "meta": {"next_cursor": following}})

    api.route = route
    write_source(
        project,
        api,
        'URL + "/feed", params={"limit": 2}, records="items", '
        'cursor_param="cursor", cursor="meta.next_cursor"',
    )
    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 3}
    assert api.paths() == ["/feed?limit=2", "/feed?limit=2&cursor=c2", "/feed?limit=2&cursor=c3"]
    check_end_to_end(project, served=3)


def test_a_page_that_is_the_array_itself(project, api):
    api.pages["/all"] = [{"id": 7}, {"id": 8}]
    write_source(project, api, 'URL + "/all"')
    result = project.run()
    assert result.counts == {"succeeded": 2}
    check_end_to_end(project, served=2)


def test_an_object_page_without_records_says_which_keys_it_has(project, api):
    api.pages["/obj"] = {"count": 2, "values": [{"id": 1}]}
    write_source(project, api, 'URL + "/obj"')
    result = project.run()
    assert result.exit_code == 1
    [error] = items(project)
    assert error["status"] == "error" and error["key"] == ""
    assert "is a JSON object, not an array" in error["error_message"]
    assert "records=" in error["error_message"] and "count, values" in error["error_message"]


# -- failures ------------------------------------------------------------------------


def three_pages(api, path="/p"):
    for n in (1, 2, 3):
        following = f"{path}?page={n + 1}" if n < 3 else None
        api.pages[f"{path}?page={n}"] = {
            "data": [{"id": 10 * n + i, "page": str(n)} for i in (1, 2)],
            "next": following,
        }


def test_429_with_retry_after_is_waited_for(project, api):
    three_pages(api)

    def route(path, count, handler):
        if path == "/p?page=2" and count == 1:
            return (429, {"Retry-After": "1"}, {"error": "slow down"})
        return False

    api.route = route
    write_source(project, api, 'URL + "/p?page=1", records="data", next="next"')
    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 6}
    times = [t for t, p, _ in api.requests if p == "/p?page=2"]
    assert len(times) == 2
    assert times[1] - times[0] >= 0.95  # Retry-After: 1, not the first backoff (none)
    check_end_to_end(project, served=6)


def test_500s_are_retried_with_backoff(project, api):
    three_pages(api)

    def route(path, count, handler):
        if path == "/p?page=3" and count <= 2:
            return (500, {}, b"oops")
        return False

    api.route = route
    write_source(project, api, 'URL + "/p?page=1", records="data", next="next"')
    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 6}
    assert api.hits["/p?page=3"] == 3
    times = [t for t, p, _ in api.requests if p == "/p?page=3"]
    assert times[2] - times[1] >= 0.9  # the second retry backs off (1 s)


def test_a_page_that_still_fails_is_one_error_item_after_the_records_before_it(project, api):
    three_pages(api)
    api.route = lambda path, count, handler: (
        (503, {}, {"error": "maintenance"}) if path == "/p?page=3" else False
    )
    write_source(project, api, 'URL + "/p?page=1", records="data", next="next", retries=1')
    result = project.run()
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 4, "error": 1}
    assert api.hits["/p?page=3"] == 2  # one retry
    [error] = [i for i in items(project) if i["status"] == "error"]
    assert error["key"] == ""
    assert error["error_type"] == "HttpPageError"
    message = error["error_message"]
    assert f"GET {api.url}/p?page=3" in message
    assert "HTTP 503" in message and "maintenance" in message
    assert "ingest_api.py::process_item" in result.output and "HTTP 503" in result.output
    assert rows(project) == [11, 12, 21, 22]
    check_end_to_end(project, served=4, behind_errors=0)

    # the API is back: a rerun reads it all, the first four are unchanged
    api.route = None
    again = project.run()
    assert again.exit_code == 0, again.output
    assert again.counts == {"succeeded": 2, "unchanged": 4}
    assert rows(project) == [11, 12, 21, 22, 31, 32]


def test_a_4xx_is_not_retried(project, api):
    api.pages["/gone"] = (404, {}, {"error": "not here"})
    write_source(project, api, 'URL + "/gone"')
    result = project.run()
    assert result.exit_code == 1
    assert api.hits["/gone"] == 1
    [error] = items(project)
    assert "HTTP 404" in error["error_message"]


def drop_mid_page(handler, records):
    body = json.dumps(records).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body[: len(body) // 2])
    handler.wfile.flush()
    handler.close_connection = True


def test_a_connection_dropped_mid_page_is_retried(project, api):
    three_pages(api)
    page2 = api.pages["/p?page=2"]

    def route(path, count, handler):
        if path == "/p?page=2" and count == 1:
            drop_mid_page(handler, page2)
            return None
        return False

    api.route = route
    write_source(project, api, 'URL + "/p?page=1", records="data", next="next"')
    result = project.run()
    assert result.exit_code == 0, result.output
    assert result.counts == {"succeeded": 6}
    assert api.hits["/p?page=2"] == 2
    check_end_to_end(project, served=6)


def test_a_connection_dropped_every_time_is_one_error_item(project, api):
    three_pages(api)
    page2 = api.pages["/p?page=2"]

    def route(path, count, handler):
        if path == "/p?page=2":
            drop_mid_page(handler, page2)
            return None
        return False

    api.route = route
    write_source(project, api, 'URL + "/p?page=1", records="data", next="next", retries=1')
    result = project.run()
    assert result.exit_code == 1
    assert result.counts == {"succeeded": 2, "error": 1}
    [error] = [i for i in items(project) if i["status"] == "error"]
    assert f"GET {api.url}/p?page=2: the connection broke" in error["error_message"]
    assert "after 2 attempts" in error["error_message"]
    check_end_to_end(project, served=2)


def test_a_page_that_is_not_json(project, api):
    three_pages(api)
    api.pages["/p?page=2"] = (200, {"Content-Type": "text/html"}, b"<html>Bad gateway</html>")
    write_source(project, api, 'URL + "/p?page=1", records="data", next="next"')
    result = project.run()
    assert result.exit_code == 1
    assert result.counts == {"succeeded": 2, "error": 1}
    assert api.hits["/p?page=2"] == 1  # a 200 that is not JSON is not retried
    [error] = [i for i in items(project) if i["status"] == "error"]
    message = error["error_message"]
    assert f"GET {api.url}/p?page=2: the page is not JSON (text/html)" in message
    assert "<html>Bad gateway" in message
    check_end_to_end(project, served=2)


def test_a_timeout_per_request(project, api):
    three_pages(api)

    def route(path, count, handler):
        if path == "/p?page=2":
            time.sleep(1.5)
        return False

    api.route = route
    write_source(
        project, api, 'URL + "/p?page=1", records="data", next="next", retries=1, timeout=0.3'
    )
    started = time.monotonic()
    result = project.run()
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert result.counts == {"succeeded": 2, "error": 1}
    [error] = [i for i in items(project) if i["status"] == "error"]
    assert "no answer within 0.3 s" in error["error_message"]
    assert api.hits["/p?page=2"] == 2
    assert elapsed < 2.5  # two bounded attempts, not two full 1.5 s waits


def test_a_server_that_is_not_there(project, api):
    api.server_close()
    port = api.server_address[1]
    project.write(
        "ingest_api.py",
        TABLE
        + f"""
@ingestkit.source(ingestkit.read_http("http://127.0.0.1:{port}/x", retries=0), key="id")
def process_item(record):
    pass
""",
    )
    result = project.run()
    assert result.exit_code == 1
    [error] = items(project)
    assert f"GET http://127.0.0.1:{port}/x: cannot connect" in error["error_message"]


def test_bad_arguments_are_a_collection_error_naming_the_line(project, api):
    write_source(project, api, 'URL, next="next", page_param="page"')
    result = project.run()
    assert result.exit_code == 1 or result.exit_code == 5 or result.exit_code == 2
    assert "give one way to the next page, not next and page_param" in result.output
    assert "ingest_api.py" in result.output


def test_without_urllib3_the_processor_fails_naming_the_install(project, api):
    api.pages["/x"] = [{"id": 1}]
    write_source(project, api, 'URL + "/x"')
    code = (
        "import sys; sys.modules['urllib3'] = None\n"
        "from ingestkit.cli import main\n"
        f"sys.exit(main(['--dsn', {project.dsn!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=project.root, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [error] = items(project)
    assert error["status"] == "error"
    assert error["error_message"] == (
        "read_http needs urllib3, which is not installed: pip install 'ingestkit[http]'"
    )
    assert "pip install 'ingestkit[http]'" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


# -- credentials -------------------------------------------------------------------------

TOKEN = "tok-5ecret-0001"
KEY = "key+5ecret/0002"  # percent-encoded in the URL
PASSWORD = "pw-5ecret-0003"
APIKEY_HEADER = "hdr-5ecret-0004"


def test_credentials_never_reach_output_logs_payloads_locations_or_argv(project, api):
    # pages 1 and 2 serve records; page 2's 2nd record fails in the processor;
    # page 3 answers 500, so its URL (with the key) is named in an error item
    three_pages(api, "/s")
    served = {}

    def route(path, count, handler):
        plain = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(plain.query))
        page = query.get("page", "1")
        served.setdefault("auth", set()).add(handler.headers.get("Authorization"))
        served.setdefault("key", set()).add(query.get("api_key"))
        served.setdefault("x", set()).add(handler.headers.get("X-Api-Key"))
        if page == "3":
            return (500, {}, {"error": "down"})
        following = f"{api.url}/s?page={int(page) + 1}&api_key={urllib.parse.quote(KEY, safe='')}"
        return (
            200,
            {},
            {"data": api.pages[f"/s?page={page}"]["data"], "next": following},
        )

    api.route = route
    project.write(
        "conftest.py",
        """
import logging

logging.basicConfig(level=logging.DEBUG)  # a user who shows urllib3's debug lines
""",
    )
    project.write(
        "ikopts.py",
        """
import ingestkit


@ingestkit.hookimpl
def ingestkit_addoption(parser):
    parser.add_argument("--api-token")
""",
    )
    project.write(
        "ingest_api.py",
        TABLE
        + f"""
URL = {api.url!r}

def pages(config):
    return ingestkit.read_http(
        "http://reader:{PASSWORD}@" + URL.partition("//")[2] + "/s",
        params={{"page": 1, "api_key": {KEY!r}}},
        headers={{"Authorization": "Bearer " + config.getoption("api_token"),
                  "X-Api-Key": {APIKEY_HEADER!r}}},
        records="data", next="next", retries=1,
    )

@ingestkit.source(pages, key="id")
def process_item(record, db, log):
    log.info("working on %s", record["id"])
    db.insert("t", {{"id": record["id"]}})
    if record["id"] == 22:
        raise RuntimeError("twenty-two")
""",
    )
    result = project.cli(
        "-p", "ikopts", "-v", "--tb=long", "--api-token", TOKEN, "--store-payloads", "all"
    )
    assert result.returncode == 1, result.stdout
    # the server got every credential
    assert served["auth"] == {"Bearer " + TOKEN}
    assert served["key"] == {KEY}
    assert served["x"] == {APIKEY_HEADER}
    assert api.hits  # and it was asked
    texts = {"output": result.stdout}
    for row in items(project):
        for column in ("error_message", "traceback", "log", "location", "payload"):
            texts[f"{row['key']}.{column}"] = json.dumps(row[column])
    [batch] = project.query("SELECT argv FROM ingestkit.batches")
    texts["argv"] = json.dumps(batch["argv"])
    for command in (["--batches"], ["--show"], ["--trace", "22"], ["--collect-only"]):
        texts[" ".join(command)] = project.cli(
            "-p", "ikopts", *command, "--api-token", TOKEN
        ).stdout
    secrets = [
        TOKEN,
        KEY,
        urllib.parse.quote(KEY, safe=""),
        PASSWORD,
        APIKEY_HEADER,
    ]
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {where}: {text}"
    # what is shown instead
    [error] = [i for i in items(project) if i["status"] == "error"]
    assert f"GET {api.url}/s?page=3&api_key=***: HTTP 500" in error["error_message"]
    [failed] = [i for i in items(project) if i["status"] == "failed"]
    assert failed["location"] == f"GET {api.url}/s?page=2&api_key=*** #2"
    assert "***" in texts["argv"]
    assert "urllib3" in result.stdout  # the debug lines were shown, masked


def test_a_password_in_the_url_is_basic_auth_on_every_page_and_never_shown(project, api):
    api.pages["/b"] = {"data": [{"id": 1}], "next": "/b?page=2"}
    api.pages["/b?page=2"] = (500, {}, {"error": "down"})
    host = api.url.partition("//")[2]
    write_source(
        project, api, f'"http://reader:{PASSWORD}@{host}/b", records="data", next="next", retries=0'
    )
    result = project.run("-v")
    assert result.counts == {"succeeded": 1, "error": 1}
    sent = {p: h.get("authorization") for _, p, h in api.requests}
    expected = "Basic " + base64.b64encode(f"reader:{PASSWORD}".encode()).decode()
    assert sent == {"/b": expected, "/b?page=2": expected}
    [error] = [i for i in items(project) if i["status"] == "error"]
    assert error["error_message"].startswith(f"GET http://reader:***@{host}/b?page=2: HTTP 500")
    assert PASSWORD not in result.output
    assert PASSWORD not in project.cli("--collect-only").stdout


# -- incremental: the example ----------------------------------------------------------

EXAMPLE = Path(__file__).parent.parent / "examples" / "api"


class Tickets:
    """The example's API: tickets changed since ``updated_since`` (inclusive), a cursor."""

    def __init__(self) -> None:
        self.tickets: dict[int, dict] = {}
        self.served = 0

    def put(self, id_: int, updated_at: str, title: str | None = None) -> None:
        self.tickets[id_] = {
            "id": id_,
            "title": f"ticket {id_}" if title is None else title,
            "updated_at": updated_at,
        }

    def route(self, path, count, handler):
        parts = urllib.parse.urlsplit(path)
        if parts.path != "/tickets":
            return False
        if handler.headers.get("Authorization") != "Bearer example-token":
            return (401, {}, {"error": "bad token"})
        query = dict(urllib.parse.parse_qsl(parts.query))
        since = query.get("updated_since", "")
        changed = sorted(
            (t for t in self.tickets.values() if t["updated_at"] >= since),
            key=lambda t: (t["updated_at"], t["id"]),
        )
        start = int(query.get("cursor", "0"))
        page = changed[start : start + int(query.get("limit", "2"))]
        self.served += len(page)
        following = str(start + len(page)) if start + len(page) < len(changed) else None
        return (200, {}, {"tickets": page, "next_cursor": following})


@pytest.fixture
def tickets(api, tmp_path, monkeypatch):
    copy = tmp_path / "api-example"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns(".ingestkit", "tests"))
    server = Tickets()
    api.route = server.route
    monkeypatch.setenv("TICKETS_API_URL", api.url)
    monkeypatch.setenv("TICKETS_API_TOKEN", "example-token")
    server.folder = copy
    return server


def test_the_api_example_loads_incrementally(ingestkit_run, tickets, api):
    for i in range(1, 6):
        tickets.put(i, f"2026-12-01T10:0{i}:00Z")
    first = ingestkit_run(tickets.folder)
    assert first.exit_code == 0, first.output
    assert first.counts == {"succeeded": 5}
    assert tickets.served == 5
    state = first.query("SELECT value FROM ingestkit.state")
    assert state == [{"value": {"updated_since": "2026-12-01T10:05:00Z"}}]

    # two new tickets and one changed: the second run asks only for what changed
    tickets.put(6, "2026-12-01T11:00:00Z")
    tickets.put(7, "2026-12-01T11:01:00Z")
    tickets.put(2, "2026-12-01T11:02:00Z", title="ticket 2, edited")
    tickets.served = 0
    api.requests.clear()
    second = ingestkit_run(tickets.folder)
    assert second.exit_code == 0, second.output
    # 5 again (updated_since is inclusive: same-second changes are never lost)
    # comes back unchanged; 6, 7 and the edited 2 run
    assert second.counts == {"succeeded": 3, "unchanged": 1}
    assert tickets.served == 4
    assert all("updated_since=2026-12-01T10%3A05%3A00Z" in p for p in api.paths())
    assert second.query("SELECT title FROM tickets WHERE id = 2") == [{"title": "ticket 2, edited"}]
    assert second.query("SELECT value FROM ingestkit.state") == [
        {"value": {"updated_since": "2026-12-01T11:02:00Z"}}
    ]

    # a ticket the processor rejects: its item fails and the cursor stays
    tickets.put(8, "2026-12-01T12:00:00Z", title="")
    third = ingestkit_run(tickets.folder)
    assert third.exit_code == 1
    assert third.counts == {"failed": 1, "unchanged": 1}
    assert third.query("SELECT value FROM ingestkit.state") == [
        {"value": {"updated_since": "2026-12-01T11:02:00Z"}}
    ]
    # fixed at the source: the next run fetches it again, since the cursor stayed
    tickets.put(8, "2026-12-01T12:30:00Z", title="ticket 8")
    fourth = ingestkit_run(tickets.folder)
    assert fourth.exit_code == 0, fourth.output
    assert fourth.counts == {"succeeded": 1, "unchanged": 1}
    assert fourth.query("SELECT value FROM ingestkit.state") == [
        {"value": {"updated_since": "2026-12-01T12:30:00Z"}}
    ]
    assert fourth.query("SELECT count(*) AS n FROM tickets") == [{"n": 8}]


# -- the pieces, directly --------------------------------------------------------------


def test_url_helpers():
    from ingestkit.http import _at, next_link, read_http, shown_url, with_params

    assert next_link(None) is None
    assert next_link('<a>; rel="prev", <b>; rel="next"') == "b"
    assert next_link("<a>; rel=next") == "a"
    assert next_link('<a>; rel="last"') is None
    assert _at({"a": [{"b": 1}, {"b": 2}]}, "a.-1.b") == 2
    with pytest.raises(KeyError):
        _at({"a": [1]}, "a.5")
    assert (
        with_params("http://h/p?x=1&y=2", {"y": [3, 4], "z": None, "t": True})
        == "http://h/p?x=1&y=3&y=4&t=true"
    )
    assert shown_url("http://h/p?q=a b&token=s3cr3t") == "http://h/p?q=a%20b&token=***"
    assert shown_url("http://h/p?q=1") == "http://h/p?q=1"
    basic = "Basic " + base64.b64encode(b"me:pa55word").decode()
    reader = read_http("http://h/p", headers={"Authorization": basic, "Accept": "text/json"})
    assert "pa55word" in reader.secrets and basic in reader.secrets
    assert "text/json" not in reader.secrets
    for bad in (
        dict(url="ftp://h/p"),
        dict(url="http://h/p", cursor_param="after"),
        dict(url="http://h/p", retries=-1),
        dict(url="http://h/p", timeout=0),
    ):
        with pytest.raises(ValueError):
            read_http(**bad)
