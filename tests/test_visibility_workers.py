"""Reports under ``-n 2``: one notifier message per batch, truthful JUnit and HTML (#19)."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

from test_visibility_notify import webhook  # noqa: F401  (the local webhook server)

LOAD = """
import os
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def table(db):
    db.execute("CREATE TABLE IF NOT EXISTS ran (id text PRIMARY KEY, pid int)")

@ingestkit.source([{"id": str(i)} for i in range(1, 401)], key="id")
def process_row(record, db):
    db.upsert("ran", {"id": record["id"], "pid": os.getpid()})
    if int(record["id"]) % 40 == 0:
        raise ValueError(f"row {record['id']} is bad")
    if record["id"] == "7":
        raise KeyError("missing")

@ingestkit.source([{"k": str(i)} for i in range(1, 201)], key="k")
def process_other(record):
    if record["k"] in ("3", "150"):
        raise RuntimeError(f"other {record['k']}")
"""
# 10 + 1 failed of process_row's 400, 2 of process_other's 200
FAILED = 13


def test_workers_send_one_message_and_write_truthful_reports(project, webhook, tmp_path):  # noqa: F811
    project.write("ingest_rows.py", LOAD)
    project.write("ingestkit.toml", f'notify_url = "{webhook.url}/hook"\n')
    junit, html = tmp_path / "junit.xml", tmp_path / "batch.html"
    result = project.run("-n", "2", "--junitxml", str(junit), "--html", str(html))
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 600 - FAILED, "failed": FAILED}
    # the items ran in the workers, not in this (the leader's) process
    pids = {r["pid"] for r in project.query("SELECT DISTINCT pid FROM ran")}
    assert pids and os.getpid() not in pids and len(pids) <= 2

    # the notifier: one message for the batch, with the whole batch's counts
    ((path, body),) = webhook.received
    assert path == "/hook"
    assert body["text"].startswith(f"ingestkit: {FAILED} of 600 items failed (batch ")
    text = body["blocks"][1]["text"]["text"]
    assert f"{600 - FAILED} succeeded, {FAILED} failed" in text
    assert "10 × ingest_rows.py::process_row: ValueError: row 40 is bad" in text
    assert result.output.count("notified 127.0.0.1") == 1

    # JUnit: the items of both processors, every failed case once
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == (
        "600",
        str(FAILED),
        "0",
    )
    failed = sorted(c.get("name") for c in root.iter("testcase") if c.find("failure") is not None)
    expected = sorted(
        [f"process_row[{i}]" for i in range(40, 401, 40)]
        + ["process_row[7]", "process_other[3]", "process_other[150]"]
    )
    assert failed == expected

    # HTML: the headline and every failed item, whichever worker ran it
    page = html.read_text()
    assert f"FAILED: {FAILED} of 600 items failed" in page
    (data,) = re.findall(r'id="failed-data">(.*?)</script>', page, re.S)
    keys = sorted(f"{r['processor'].split('::')[1]}[{r['key']}]" for r in json.loads(data))
    assert keys == expected
    assert f"{400:,} (11 failed)" in page and "200 (2 failed)" in page


ROWS = """
import ingestkit

@ingestkit.source(ingestkit.read_csv("rows.csv"), key="id")
def process_row(record):
    if not record["w"].isdigit():
        raise ValueError(f"w is not a number: {record['w']!r}")
"""


def _rows(project, bump=(), drop=()):
    lines = [
        f"{i},{'x' if i % 50 == 0 else i + (1 if i in bump else 0)}"
        for i in range(1, 301)
        if i not in drop
    ]
    project.write("rows.csv", "id,w\n" + "".join(f"{line}\n" for line in lines))


def test_workers_keep_the_latest_records_so_the_report_shows_what_changed(project, tmp_path):
    """The default store_payloads = latest also when workers run the batch; retiring too."""
    project.write("ingest_rows.py", ROWS)
    _rows(project)
    assert project.run("-n", "2").exit_code == 1
    assert project.scalar("SELECT count(record) FROM ingestkit.latest") == 294
    _rows(project, bump=(1, 101), drop=(50,))
    html = tmp_path / "batch.html"
    result = project.run("-n", "2", "--html", str(html))
    assert result.counts == {"succeeded": 2, "failed": 5, "unchanged": 292}
    assert "ingest_rows.py::process_row: 2 changed records" in result.output
    (changed,) = re.findall(r'<section id="changed">(.*?)</section>', html.read_text(), re.S)
    assert "2 changed records" in changed
    assert "w: &#34;101&#34; → &#34;102&#34;" in changed
    (retired,) = re.findall(r'<section id="retired">(.*?)</section>', html.read_text(), re.S)
    assert "<td>ingest_rows.py::process_row</td><td>50</td><td>failed</td>" in retired
