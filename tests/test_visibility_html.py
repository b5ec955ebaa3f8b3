"""The --html report shows what a user needs to fix a load (issue #19)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

LOAD = """
import logging
import ingestkit

@ingestkit.source([{"id": str(i), "amount": "oops" if i == 500 else str(i)}
                   for i in range(1, 1001)], key="id")
def process_amount(record):
    if record["amount"] == "oops":
        logging.getLogger("load").warning("cannot read amount of row %s", record["id"])
        raise ValueError(f"amount {record['amount']!r} is not a number")

@ingestkit.source([{"k": "a"}, {"k": "b"}], key="k")
def process_same(record):
    pass
"""


def _page(project, tmp_path, *args):
    report = tmp_path / "batch.html"
    result = project.run("--html", str(report), *args)
    return result, report.read_text()


def test_headline_counts_and_the_failed_records_values(project, tmp_path):
    project.write("ingest_money.py", LOAD)
    result, page = _page(project, tmp_path)
    assert result.exit_code == 1
    assert "FAILED: 1 of 1,002 items failed" in page
    # the one failed item of 1000 still has a visible red segment
    reds = re.findall(r'width="([\d.]+)" height="18" fill="#c62828"', page)
    assert reds and float(reds[0]) >= 4
    assert "1,000 (1 failed)" in page
    # the failing row's values, not only the exception
    (data,) = re.findall(r'id="failed-data">(.*?)</script>', page, re.S)
    (row,) = json.loads(data)
    assert row["key"] == "500" and json.loads(row["record"]) == {"id": "500", "amount": "oops"}
    assert "amount 'oops' is not a number" in row["message"]
    assert "ingestkit --lf" in page
    assert "cannot read amount of row 500" in page
    assert "(1 item)" in page and "(1 items)" not in page
    assert "download CSV" in page


def test_an_unchanged_processor_stays_in_the_chart(project, tmp_path):
    project.write("ingest_money.py", LOAD)
    project.run()
    _, page = _page(project, tmp_path)
    assert "ingest_money.py::process_same</text>" in page
    assert "unchanged: 2" in page


def test_markup_in_data_is_escaped_and_cannot_end_the_script(project, tmp_path):
    project.write(
        "ingest_x.py",
        """
import ingestkit

@ingestkit.source([{"k": "</script><b>x</b>"}], key="k")
def process_x(record):
    raise ValueError("<img src=x onerror=alert(1)>")
""",
    )
    _, page = _page(project, tmp_path)
    assert "<img src=x" not in page and "<b>x</b>" not in page
    assert page.count("</script>") == 2


def test_a_users_own_template(project, tmp_path):
    project.write("ingest_money.py", LOAD)
    mine = tmp_path / "mine.html.j2"
    mine.write_text("<p>{{ headline.word }} {{ counts.failed }} {{ batch.id }}</p>")
    result, page = _page(project, tmp_path, "--html-template", str(mine))
    assert page == f"<p>FAILED 1 {result.batch_id}</p>"


def test_without_jinja2_html_is_one_line_naming_the_extra(project, tmp_path):
    project.write("ingest_money.py", LOAD)
    code = (
        "import sys; sys.modules['jinja2'] = None\n"
        "from ingestkit.cli import main\n"
        f"sys.exit(main(['--dsn', {project.dsn!r}, '--html', {str(tmp_path / 'r.html')!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=project.root, capture_output=True, text=True
    )
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "ERROR: --html needs jinja2, which is not installed: pip install 'ingestkit[html]'"
    ]
    assert project.query("SELECT 1 FROM pg_namespace WHERE nspname = 'ingestkit'") == []


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_the_failed_items_table_renders_in_chromium(project, tmp_path):
    project.write("ingest_money.py", LOAD)
    report = tmp_path / "batch.html"
    project.run("--html", str(report))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        ["chromium", *flags, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    (body,) = re.findall(r'<table id="failed">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert "<td>500</td>" in body and "oops" in body
    assert "page 1 of 1" in dom and "1 of 1 shown" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", *flags, f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 5000
    shutil.copy(shot, "/tmp/ingestkit-report-failed.png")


def test_a_past_batchs_page_has_the_headline_and_a_rerun_command(project, tmp_path):
    project.write("ingest_money.py", LOAD)
    batch = project.run().batch_id
    past = tmp_path / "past.html"
    assert project.run("--show", batch, "--html", str(past)).exit_code == 0
    page = past.read_text()
    assert "FAILED: 1 of 1,002 items failed" in page
    assert '<code class="cmd" id="rerun">ingestkit --lf</code>' in page


ROWS = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def table(db):
    db.execute("CREATE TABLE IF NOT EXISTS rows (id int PRIMARY KEY, w int)")

@ingestkit.source(ingestkit.read_csv("rows.csv"), key="id")
def process_row(record, db):
    if not record["w"].isdigit():
        raise ValueError(f"w is not a number: {record['w']!r}")
    db.upsert("rows", {"id": int(record["id"]), "w": int(record["w"])})
"""


def _rows(project, rows):
    project.write("rows.csv", "id,w\n" + "".join(f"{k},{w}\n" for k, w in rows))


def _section(page, ident):
    (section,) = re.findall(rf'<section id="{ident}">(.*?)</section>', page, re.S)
    return section


def test_the_page_shows_retired_keys_and_changed_records_with_their_diffs(project, tmp_path):
    project.write("ingest_rows.py", ROWS)
    _rows(project, [(1, 99), (2, "x"), (3, 30), (4, "<b>y</b>")])
    assert project.run().exit_code == 1
    _rows(project, [(1, 100), (3, 30), (4, "<b>y</b>")])  # 2 gone, 1 changed
    result, page = _page(project, tmp_path)
    assert result.exit_code == 1
    retired = _section(page, "retired")
    assert "1 earlier failure gone from the source, retired" in retired
    assert "<td>ingest_rows.py::process_row</td><td>2</td><td>failed</td>" in retired
    assert "w is not a number: &#39;x&#39;" in retired
    changed = _section(page, "changed")
    assert "1 changed record" in changed
    assert "<td>ingest_rows.py::process_row</td><td>1</td>" in changed
    assert "w: &#34;99&#34; → &#34;100&#34;" in changed
    assert "<b>y</b>" not in page
    # a past batch's page shows the same
    past = tmp_path / "past.html"
    assert project.run("--show", result.batch_id, "--html", str(past)).exit_code == 0
    again = past.read_text()
    assert _section(again, "retired") == retired and _section(again, "changed") == changed


def test_a_batch_that_retired_and_changed_nothing_says_so(project, tmp_path):
    project.write("ingest_money.py", LOAD)
    _, page = _page(project, tmp_path)
    assert "No earlier failure was retired" in _section(page, "retired")
    assert "No record changed" in _section(page, "changed")
