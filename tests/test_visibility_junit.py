"""JUnit XML that a CI server reads truthfully (issue #19)."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest

LOAD = """
import logging
import ingestkit

@ingestkit.source(({"id": str(i), "amount": "oops" if i % 100 == 7 else str(i)}
                   for i in range(1, 1001)), key="id")
def process_amount(record):
    if record["amount"] == "oops":
        logging.getLogger("load").warning("cannot read amount of %s", record["id"])
        raise ValueError(f"amount {record['amount']!r} is not a number")
"""


def test_counts_are_items_and_names_are_pytests(project, tmp_path):
    project.write("pipelines/ingest_money.py", LOAD)
    out = tmp_path / "junit.xml"
    assert project.run("--junitxml", str(out)).exit_code == 1
    root = ET.parse(out).getroot()
    (suite,) = root.findall("testsuite")
    # 10 of 1000 items failed: the dashboard must say 1%, not 10 of 11
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1000", "10", "0")
    assert (root.get("tests"), root.get("failures")) == ("1000", "10")
    cases = suite.findall("testcase")
    assert len(cases) == 11
    # pytest's convention: the module dotted is the classname, Jenkins splits it at the last dot
    assert {c.get("classname") for c in cases} == {"pipelines.ingest_money"}
    assert cases[0].get("name") == "process_amount[7]"
    assert cases[-1].get("name") == "process_amount[summary]"
    assert "990 succeeded, 10 failed" in cases[-1].find("system-out").text
    assert suite.get("hostname") == socket.gethostname()
    assert datetime.fromisoformat(suite.get("timestamp")).tzinfo is not None


def test_a_failed_case_carries_location_record_and_log(project, tmp_path):
    project.write("data/rows.csv", "id,amount\n1,10\n2,oops\n")
    project.write(
        "ingest_csv.py",
        """
import logging
import ingestkit

@ingestkit.source(ingestkit.read_csv("data/rows.csv"), key="id")
def process_row(record):
    logging.getLogger("load").warning("looking at %s", record["id"])
    int(record["amount"])
""",
    )
    out = tmp_path / "junit.xml"
    assert project.run("--junitxml", str(out)).exit_code == 1
    (case,) = [c for c in ET.parse(out).iter("testcase") if c.find("failure") is not None]
    failure = case.find("failure")
    assert failure.get("type") == "ValueError"
    assert failure.get("message").startswith("data/rows.csv:3: ")  # where the data is
    out_text = case.find("system-out").text
    assert "location: data/rows.csv:3" in out_text
    record = json.loads(out_text.split("record: ", 1)[1])
    assert record == {"id": "2", "amount": "oops"}
    assert "looking at 2" in case.find("system-err").text


def test_junitparser_reads_the_true_counts(project, tmp_path):
    junitparser = pytest.importorskip("junitparser")
    project.write("pipelines/ingest_money.py", LOAD)
    out = tmp_path / "junit.xml"
    project.run("--junitxml", str(out))
    xml = junitparser.JUnitXml.fromfile(str(out))
    (suite,) = list(xml)
    assert (suite.tests, suite.failures) == (1000, 10)
