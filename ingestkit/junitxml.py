"""``--junitxml PATH`` (plugin ``junitxml``): the batch as JUnit XML for CI servers.

One ``<testsuite>`` per processor, one ``<testcase>`` per failed or errored
item, plus one summary case per processor carrying its counts.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

from .reports import COUNTED

if TYPE_CHECKING:
    from .config import Config
    from .runner import Chunk
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Failed items kept per processor in the XML (the rest are counted).
MAX_CASES = 1000


@hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--junitxml", metavar="PATH", help="write the batch as JUnit XML")


@hookimpl
def ingestkit_configure(config: Config) -> None:
    if config.option.junitxml:
        config.pluginmanager.register(JunitXml(Path(config.option.junitxml)), "junitxml-writer")


def _clean(text: str | None) -> str:
    """XML 1.0 cannot hold most control characters."""
    return "".join(c for c in (text or "") if c in "\t\n\r" or ord(c) >= 32)


class JunitXml:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: dict[str, Counter] = {}
        self.cases: dict[str, list] = {}
        self.seconds: Counter = Counter()

    @hookimpl
    def ingestkit_chunk_finish(self, chunk: Chunk) -> None:
        nodeid = chunk.processor.nodeid
        counts = self.counts.setdefault(nodeid, Counter())
        cases = self.cases.setdefault(nodeid, [])
        counts["unchanged"] += chunk.unchanged
        for report in chunk.reports:
            counts[report.status] += 1
            self.seconds[nodeid] += report.duration_ms / 1000.0
            if report.failed and len(cases) < MAX_CASES:
                cases.append(report)

    @hookimpl
    def ingestkit_batch_finish(self, session: Session, exitstatus: int) -> None:
        root = ET.Element("testsuites", name="ingestkit")
        for processor in session.processors:
            nodeid = processor.nodeid
            counts = self.counts.get(nodeid, Counter())
            cases = self.cases.get(nodeid, [])
            suite = ET.SubElement(
                root,
                "testsuite",
                name=nodeid,
                tests=str(len(cases) + 1),
                failures=str(sum(1 for r in cases if r.status == "failed")),
                errors=str(sum(1 for r in cases if r.status == "error")),
                skipped="0",
                time=f"{self.seconds[nodeid]:.3f}",
            )
            for report in cases:
                case = ET.SubElement(
                    suite,
                    "testcase",
                    classname=nodeid,
                    name=_clean(f"[{report.key}]"),
                    time=f"{report.duration_ms / 1000.0:.3f}",
                )
                tag = "failure" if report.status == "failed" else "error"
                element = ET.SubElement(
                    case, tag, message=_clean(report.error_message), type=report.error_type or ""
                )
                element.text = _clean(report.traceback or report.error_message)
            summary = ET.SubElement(suite, "testcase", classname=nodeid, name="summary", time="0")
            shown = ", ".join(f"{counts[s]} {s}" for s in COUNTED if counts[s]) or "no items"
            ET.SubElement(summary, "system-out").text = shown
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(self.path, encoding="utf-8", xml_declaration=True)
