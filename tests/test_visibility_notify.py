"""The notifier: one Slack/Teams webhook message per batch with failures (issue #19)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

LOAD = """
import ingestkit

@ingestkit.source([{"id": str(i)} for i in range(1, 101)], key="id")
def process_row(record):
    if int(record["id"]) % 10 == 0:
        raise ValueError(f"row {record['id']} is bad")
    if record["id"] == "7":
        raise KeyError("missing")
"""


@pytest.fixture
def webhook():
    """A local incoming-webhook server: the bodies it received, by path."""
    received: list[tuple[str, dict]] = []
    status = {"code": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(status["code"])
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.received = received
    server.status = status
    server.url = f"http://127.0.0.1:{server.server_port}"
    yield server
    server.shutdown()
    server.server_close()


def _configure(project, url, fmt=None):
    lines = [f'notify_url = "{url}"']
    if fmt:
        lines.append(f'notify_format = "{fmt}"')
    project.write("ingestkit.toml", "\n".join(lines) + "\n")


def test_slack_gets_one_message_with_counts_groups_and_rerun(project, webhook):
    project.write("ingest_rows.py", LOAD)
    _configure(project, f"{webhook.url}/services/T000/B000/secret-token")
    result = project.run()
    assert result.exit_code == 1
    ((path, body),) = webhook.received
    assert path == "/services/T000/B000/secret-token"
    assert body["text"].startswith("ingestkit: 11 of 100 items failed (batch ")
    assert result.batch_id in body["text"]
    text = body["blocks"][1]["text"]["text"]
    assert "89 succeeded, 11 failed" in text
    assert "10 × ingest_rows.py::process_row: ValueError: row 10 is bad" in text
    assert "1 × ingest_rows.py::process_row: KeyError" in text
    assert "rerun: ingestkit --lf" in text
    assert "notified 127.0.0.1 (slack)" in result.output
    assert "secret-token" not in result.output


def test_teams_gets_an_adaptive_card(project, webhook):
    project.write("ingest_rows.py", LOAD)
    _configure(project, f"{webhook.url}/workflows/abc", "teams")
    project.run()
    ((_, body),) = webhook.received
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    texts = [b["text"] for b in card["body"]]
    assert texts[0].startswith("ingestkit: 11 of 100 items failed")
    assert any("rerun: ingestkit --lf" in t for t in texts)


def test_no_message_for_a_batch_without_failures(project, webhook):
    project.write("ingest_ok.py", "def process_once():\n    pass\n")
    _configure(project, webhook.url + "/hook")
    assert project.run().exit_code == 0
    assert webhook.received == []


def test_an_unreachable_webhook_is_a_warning_not_a_failure(project, webhook):
    project.write("ingest_rows.py", LOAD)
    webhook.status["code"] = 500
    _configure(project, webhook.url + "/hook/secret-token")
    result = project.run()
    assert result.exit_code == 1  # the batch's own outcome, nothing else
    assert "WARNING: notify: could not post to 127.0.0.1: HTTP 500" in result.output
    assert "secret-token" not in result.output
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 100


def test_the_url_from_the_environment_and_a_bad_format(project, webhook, monkeypatch):
    project.write("ingest_rows.py", LOAD)
    monkeypatch.setenv("INGESTKIT_NOTIFY_URL", webhook.url + "/env")
    project.run()
    assert [p for p, _ in webhook.received] == ["/env"]
    project.write("ingestkit.toml", 'notify_format = "email"\n')
    result = project.run()
    assert result.exit_code == 4
    assert "notify_format = 'email' is not one of 'slack', 'teams'" in result.output
