"""The terminal as pytest's: groups in --help, colour, width, -r, --durations, -o,
--rootdir, INGESTKIT_ADDOPTS, --log-level (issue #19)."""

from __future__ import annotations

import io
import re
import time

from ingestkit import __version__
from ingestkit.config import make_config
from ingestkit.terminal import TerminalReporter

LOAD = """
import logging
import ingestkit

log = logging.getLogger("load")

@ingestkit.source([{"id": str(i)} for i in range(1, 21)], key="id")
def process_a(record):
    log.info("looking at %s", record["id"])
    if record["id"] == "4":
        ingestkit.skip("four is skipped")
    if record["id"] == "5":
        raise ValueError("five is bad")

def process_b():
    pass
"""
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_help_has_pytests_groups_config_keys_and_environment(project):
    out = project.cli("--help").stdout
    headings = [line[:-1] for line in out.splitlines() if re.match(r"^[a-z][^ ].*:$", line)]
    assert headings[:4] == ["positional arguments", "options", "general", "selecting what runs"]
    assert "reporting" in headings and "configuration" in headings
    general = out.split("\ngeneral:\n", 1)[1].split("\n\n", 1)[0]
    assert "-V, --version" in general and "--dsn DSN" in general
    selecting = out.split("\nselecting what runs:\n", 1)[1].split("\n\n", 1)[0]
    assert "--lf, --last-failed" in selecting and "--version" not in selecting
    keys = out.split("[tool.ingestkit] keys", 1)[1]
    for key in ("dsn", "paths", "store_payloads", "log_level", "notify_url"):
        assert re.search(rf"^  {key} +\S", keys, re.M), key
    for var in ("INGESTKIT_DSN", "DATABASE_URL", "INGESTKIT_ADDOPTS", "NO_COLOR"):
        assert re.search(rf"^  {var} +\S", keys, re.M), var


def test_dash_V_prints_the_version(project):
    proc = project.cli("-V")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"ingestkit {__version__}"


def test_colour_follows_color_no_color_and_force_color(project):
    project.write("ingest_x.py", LOAD)
    assert not ANSI.search(project.cli().stdout)  # a pipe: no colour
    coloured = project.cli("--color=yes").stdout
    assert "\x1b[31m" in coloured and "\x1b[1m" in coloured
    assert ANSI.sub("", coloured).count("rerun the failures: ingestkit --lf") == 1
    assert "\x1b[" in project.cli(env={"FORCE_COLOR": "1"}).stdout
    assert "\x1b[" not in project.cli(env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).stdout
    assert "\x1b[" in project.cli("--color", "yes", env={"NO_COLOR": "1"}).stdout


def test_sections_take_the_terminals_width(project):
    project.write("ingest_x.py", LOAD)
    out = project.cli(env={"COLUMNS": "132"}).stdout
    first = out.splitlines()[0]
    assert "ingestkit session starts" in first and len(first) >= 130


def test_short_summary_chars_and_durations(project):
    project.write("ingest_x.py", LOAD)
    out = project.cli("-r", "fEs", "--durations", "3").stdout
    summary = out.split("short summary", 1)[1]
    assert "FAILED ingest_x.py::process_a: ValueError (1 item), first key '5'" in summary
    assert "SKIPPED ingest_x.py::process_a: four is skipped (1 item), first key '4'" in summary
    slow = out.split("slowest 3 durations", 1)[1].splitlines()[1:4]
    assert all(re.match(r"\d+\.\d{3}s \w+ +ingest_x\.py::process_[ab]\[", line) for line in slow)
    assert "short summary" not in project.cli("-r", "N").stdout


def test_the_failure_shows_its_captured_log_and_info_lines_are_stored(project):
    project.write("ingest_x.py", LOAD)
    out = project.cli().stdout
    assert "captured log:\n  INFO load: looking at 5" in out
    assert project.scalar("SELECT log FROM ingestkit.items WHERE key = '3'") == (
        "INFO load: looking at 3"
    )
    project.cli("--reprocess", "--log-level", "warning")
    logs = project.query("SELECT log FROM ingestkit.items WHERE key = '3' ORDER BY finished_at")
    assert logs[-1]["log"] is None


def test_addopts_from_the_environment_and_overrides(project):
    project.write("ingest_x.py", LOAD)
    proc = project.cli(env={"INGESTKIT_ADDOPTS": "-k process_b"})
    assert proc.returncode == 0, proc.stdout
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 1
    assert project.cli("-o", "store_payloads=all", "-k", "process_a").returncode == 1
    stored = project.scalar(
        "SELECT count(*) FROM ingestkit.items WHERE status = 'succeeded' AND payload IS NOT NULL"
    )
    assert stored == 18
    bad = project.cli("-o", "no_such_key=1")
    assert bad.returncode == 4 and "unknown config key(s): no_such_key" in bad.stdout
    assert project.cli("-o", "oops").returncode == 4


def test_rootdir_option_anchors_node_ids(project):
    project.write("pipelines/ingest_x.py", "def process_once():\n    pass\n")
    proc = project.cli(".", "--rootdir", "..", cwd=project.root / "pipelines")
    assert proc.returncode == 0, proc.stdout
    assert project.scalar("SELECT processor FROM ingestkit.items") == (
        "pipelines/ingest_x.py::process_once"
    )
    assert project.cli("--rootdir", "nowhere").returncode == 4


class _Tty(io.StringIO):
    def isatty(self):
        return True


class _FileSource:
    """A file reader as the sources plugin exposes it: bytes of a reading."""

    bytes_total = 50_000_000
    bytes_read = 12_500_000


def test_a_file_source_gets_a_bar_with_eta_as_wide_as_the_terminal(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    config = make_config(["--color=no"])
    reporter = TerminalReporter(config, file=_Tty())

    class Proc:
        nodeid = "ingest_big.py::process_row"

        class source:
            src = _FileSource()

    reporter.processor_start(Proc)  # type: ignore[arg-type]
    reporter.proc_counts = {"succeeded": 1000}
    reporter.proc_started = time.perf_counter() - 10
    line = reporter._progress(time.perf_counter())
    assert len(line) <= 100
    assert " 25% " in line and "12.5/50.0 MB" in line
    assert re.search(r"\[#+ +\]", line)
    assert "ETA 30s" in line
