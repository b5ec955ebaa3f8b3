"""``--junitxml PATH`` (plugin ``junitxml``): the batch as JUnit XML for CI servers.

One ``<testsuite>`` per processor, one ``<testcase>`` per failed or errored
item (up to :data:`MAX_CASES` per processor), plus one summary case per
processor carrying its counts.

Names follow pytest's: item ``pipelines/ingest_x.py::process_x[KEY]`` is
``classname="pipelines.ingest_x"``, ``name="process_x[KEY]"``. The suite's
``tests``/``failures``/``errors``/``skipped`` attributes count *items* (an
``unchanged`` item counts as a passed test), so a dashboard that reads them
shows 213 failed of 200,000, not of 214; succeeded items are not written one
case each, they are counted in the summary case.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

from .reports import COUNTED, ItemReport

if TYPE_CHECKING:
    from .chunks import Chunk
    from .config import ArgumentParser as Parser
    from .config import Config
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Failed items kept per processor in the XML (the rest are counted).
MAX_CASES = 1000


@hookimpl
def ingestkit_addoption(parser: Parser) -> None:
    group = parser.getgroup("reporting")
    group.addoption("--junitxml", metavar="PATH", help="write the batch as JUnit XML")


@hookimpl
def ingestkit_configure(config: Config) -> None:
    if config.option.junitxml:
        config.pluginmanager.register(JunitXml(Path(config.option.junitxml)), "junitxml-writer")


def _clean(text: str | None) -> str:
    """XML 1.0 cannot hold most control characters."""
    return "".join(c for c in (text or "") if c in "\t\n\r" or ord(c) >= 32)


def names(nodeid: str) -> tuple[str, str]:
    """pytest's ``(classname, name)`` of a node id: the module path dotted, then the rest."""
    path, sep, rest = nodeid.partition("::")
    if not sep:
        return "", nodeid
    module = path[:-3] if path.endswith(".py") else path
    return module.replace("/", ".").replace("\\", "."), rest


class JunitXml:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: dict[str, Counter[str]] = {}
        self.cases: dict[str, list[ItemReport]] = {}
        self.seconds: dict[str, float] = {}
        self.started = datetime.now(UTC)

    @hookimpl
    def ingestkit_chunk_finish(self, chunk: Chunk) -> None:
        nodeid = chunk.processor.nodeid
        counts = self.counts.setdefault(nodeid, Counter())
        cases = self.cases.setdefault(nodeid, [])
        counts["unchanged"] += chunk.unchanged
        for report in chunk.reports:
            counts[report.status] += 1
            self.seconds[nodeid] = self.seconds.get(nodeid, 0.0) + report.duration_ms / 1000.0
            if report.failed and len(cases) < MAX_CASES:
                cases.append(report)

    @hookimpl
    def ingestkit_batch_finish(self, session: Session, exitstatus: int) -> None:
        mask = session.config.mask
        root = ET.Element("testsuites", name="ingestkit")
        totals: Counter[str] = Counter()
        timestamp = self.started.isoformat(timespec="seconds")
        hostname = socket.gethostname()
        for processor in session.processors:
            nodeid = processor.nodeid
            counts = self.counts.get(nodeid, Counter())
            cases = self.cases.get(nodeid, [])
            items = sum(counts[s] for s in COUNTED)
            totals.update(counts)
            suite = ET.SubElement(
                root,
                "testsuite",
                name=nodeid,
                tests=str(items),
                failures=str(counts["failed"]),
                errors=str(counts["error"]),
                skipped=str(counts["skipped"]),
                time=f"{self.seconds.get(nodeid, 0.0):.3f}",
                timestamp=timestamp,
                hostname=hostname,
            )
            classname, name = names(nodeid)
            for report in cases:
                _failed_case(suite, classname, name, report, mask)
            summary = ET.SubElement(
                suite, "testcase", classname=classname, name=f"{name}[summary]", time="0"
            )
            shown = ", ".join(f"{counts[s]} {s}" for s in COUNTED if counts[s]) or "no items"
            written = len(cases)
            failed = counts["failed"] + counts["error"]
            if failed > written:
                shown += f" ({failed - written} more failed items not written as cases)"
            ET.SubElement(summary, "system-out").text = shown
        root.set("tests", str(sum(totals[s] for s in COUNTED)))
        root.set("failures", str(totals["failed"]))
        root.set("errors", str(totals["error"]))
        root.set("time", f"{sum(self.seconds.values()):.3f}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(self.path, encoding="utf-8", xml_declaration=True)


def _failed_case(
    suite: ET.Element, classname: str, name: str, report: ItemReport, hide: Callable[[str], str]
) -> None:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=classname,
        name=_clean(f"{name}[{report.key}]"),
        time=f"{report.duration_ms / 1000.0:.3f}",
    )
    tag = "failure" if report.status == "failed" else "error"
    message = report.error_message or ""
    if report.location:
        message = f"{report.location}: {message}"
    element = ET.SubElement(case, tag, message=_clean(hide(message)), type=report.error_type or "")
    element.text = _clean(hide(report.traceback or report.error_message or ""))
    out = []
    if report.location:
        out.append(f"location: {report.location}")
    if report.payload:
        out.append(f"record: {report.payload}")
    if out:
        ET.SubElement(case, "system-out").text = _clean(hide("\n".join(out)))
    if report.log:
        ET.SubElement(case, "system-err").text = _clean(hide(report.log))
