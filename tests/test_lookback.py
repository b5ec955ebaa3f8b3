"""Issue 3's looking back: batches, one batch's items, one key's history, export, HTML."""

import csv
import io
import json
import shutil
import subprocess
import time

import pytest

ROWS = """
import ingestkit

@ingestkit.source([{"id": i} for i in range(1, 1001)], key="id")
def process_row(record):
    n = record["id"]
    if n % 97 == 0:
        raise ValueError(f"multiple of 97: {n}")
    if n % 101 == 0:
        raise KeyError(f"k{n}")
    if n in (13, 26, 39, 52, 65, 78, 91, 104, 117, 130, 143, 156, 169, 182, 195, 208, 221, 234):
        raise ingestkit.LookupMissing("countries", {"code": f"X{n}"})
"""
BAD = {str(n) for n in range(1, 1001) if n % 97 == 0 or n % 101 == 0} | {
    str(n) for n in range(13, 235, 13)
}


def test_lf_after_fixing_one_reason_reruns_exactly_the_failures(project):
    assert len(BAD) == 37
    project.write("ingest_rows.py", ROWS)
    first = project.run()
    assert first.counts == {"succeeded": 963, "failed": 37}
    assert {k for k, s in first.statuses().items() if s == "failed"} == BAD
    # fix one reason: multiples of 97 pass now
    project.write("ingest_rows.py", ROWS.replace("if n % 97 == 0:", "if False:"))
    lf = project.run("--lf")
    assert len(lf.items) == 37
    assert lf.counts == {"succeeded": 10, "failed": 27}
    assert all(i["attempt"] == 2 for i in lf.items)
    lf2 = project.run("--lf")
    assert len(lf2.items) == 27
    assert project.scalar("SELECT count(*) FROM ingestkit.latest WHERE status = 'failed'") == 27


def test_batches_show_trace_and_export_match_the_tables(project):
    project.write("ingest_rows.py", ROWS)
    first = project.run()
    listing = project.run("--batches")
    assert listing.exit_code == 0
    assert first.batch_id[:8] in listing.output
    assert "963 succeeded, 37 failed" in listing.output

    as_json = json.loads(project.run("--batches", "--json").output)
    assert as_json[0]["counts"]["failed"] == 37

    shown = project.run("--show", first.batch_id[:8])
    assert "37 item(s) with status failed, error" in shown.output
    assert "process_row[97] FAILED ValueError: multiple of 97: 97" in shown.output
    shown_json = json.loads(project.run("--show", "last", "--status", "succeeded", "--json").output)
    assert len(shown_json["items"]) == 963

    project.write("ingest_rows.py", ROWS.replace("if n % 97 == 0:", "if False:"))
    project.run("--lf")
    trace = json.loads(project.run("--trace", "ingest_rows.py::process_row[97]", "--json").output)
    assert [(t["status"], t["attempt"]) for t in trace] == [("failed", 1), ("succeeded", 2)]
    text = project.run("--trace", "ingest_rows.py::process_row[97]").output
    assert "2 outcome(s)" in text and "ValueError" in text

    exported = project.run("--export", first.batch_id).output
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert {r["key"] for r in rows} == BAD
    assert json.loads(rows[0]["payload"])["id"] == int(rows[0]["key"])
    lines = project.run("--export", first.batch_id, "--format", "jsonl").output.splitlines()
    assert len(lines) == 37
    assert json.loads(lines[0])["status"] == "failed"


def test_bad_batch_reference_and_trace_argument_are_usage_errors(project):
    project.write("ingest_rows.py", ROWS)
    assert project.run("--show").exit_code == 4  # no batches yet
    project.run()
    assert project.run("--show", "ffffffff").exit_code == 4
    assert project.run("--trace", "not-a-node-id").exit_code == 4
    assert project.run("--show", "--status", "bogus").exit_code == 4


def test_killed_batch_shows_interrupted_in_the_listing(project):
    project.write(
        "ingest_slow.py",
        """
import time
import ingestkit

@ingestkit.source(range(100000), key=str)
def process_n(record):
    time.sleep(0.001)
""",
    )
    proc = project.spawn("--chunk-size", "10")
    project.wait_for_items(20)
    proc.kill()
    proc.wait()
    # the server notices the dead client within milliseconds; no lease has to expire
    deadline = time.time() + 10
    while True:
        listing = json.loads(project.run("--batches", "--json").output)
        if listing[0]["status"] != "running" or time.time() > deadline:
            break
        time.sleep(0.05)
    assert [b["status"] for b in listing] == ["interrupted"]


def test_html_report_is_self_contained(project, tmp_path):
    project.write("ingest_rows.py", ROWS)
    report = tmp_path / "batch.html"
    result = project.run("--html", str(report))
    page = report.read_text()
    assert result.batch_id in page
    assert "<svg" in page and "multiple of 97" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    past = tmp_path / "past.html"
    assert project.run("--show", result.batch_id, "--html", str(past)).exit_code == 0
    assert result.batch_id in past.read_text()


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_html_report_renders_in_headless_chromium(project, tmp_path):
    project.write("ingest_rows.py", ROWS)
    report = tmp_path / "batch.html"
    project.run("--html", str(report))
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        ["chromium", *flags, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Failures (37 in 3 groups)" in dom.stdout
    subprocess.run(
        ["chromium", *flags, f"--screenshot={shot}", "--window-size=1200,900", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 5000
    shutil.copy(shot, "/tmp/ingestkit-report.png")


CHANGING = """
import ingestkit

@ingestkit.source(ingestkit.read_csv("rows.csv"), key="id")
def process_row(record):
    if not record["w"].isdigit():
        raise ValueError(f"w is not a number: {record['w']!r}")
"""


def test_export_carries_each_items_changed_fields(project):
    project.write("ingest_rows.py", CHANGING)
    project.write("rows.csv", "id,w\n1,99\n2,20\n")
    project.run()
    project.write("rows.csv", "id,w\n1,100\n2,20\n3,x\n")
    batch = project.run().batch_id
    args = ("--export", batch, "--status", "succeeded,failed")
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(project.run(*args).output))}
    assert set(rows) == {"1", "3"}
    assert json.loads(rows["1"]["changes"]) == {"w": ["99", "100"]}
    assert rows["3"]["changes"] == ""
    lines = project.run(*args, "--format", "jsonl").output.splitlines()
    as_json = {r["key"]: r for r in map(json.loads, lines)}
    assert as_json["1"]["changes"] == {"w": ["99", "100"]}
    assert as_json["3"]["changes"] is None
