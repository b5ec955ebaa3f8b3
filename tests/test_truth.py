"""Issue 13, runtime truth: what ingestkit records and reports is what happened."""

from __future__ import annotations

import pytest

QUICK = """
import ingestkit

def process_once(db):
    db.execute("SELECT 1")
"""


@pytest.mark.slow
def test_concurrent_runs_never_mark_each_other_interrupted(project):
    """16 runs at once on one database: every batch is live while the others look."""
    project.write("ingest_quick.py", QUICK)
    assert project.cli().returncode == 0  # the schema exists before the race
    procs = [project.spawn() for _ in range(16)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, "\n".join(outputs)
    assert not [o for o in outputs if "marked interrupted" in o], "\n".join(outputs)
    statuses = project.query("SELECT status, count(*) AS n FROM ingestkit.batches GROUP BY 1")
    assert statuses == [{"status": "finished", "n": 17}]


# -- rootdir: a stray .ingestkit/ above the project --------------------------

ONE = """
import ingestkit

@ingestkit.source([{"id": "1"}, {"id": "2"}], key="id")
def process_row(record, db):
    db.execute("SELECT 1")
"""


def _run_in(project, cwd, *args, home):
    result = project.cli(*args, cwd=cwd, env={"HOME": str(home)})
    return result.returncode, result.stdout


def _processors(project) -> list[str]:
    return [r["p"] for r in project.query("SELECT DISTINCT processor AS p FROM ingestkit.items")]


def test_stray_marker_in_home_does_not_reroot_a_project_below(project, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code, out = _run_in(project, home, home=home)  # a stray run in the home directory
    assert code == 5, out
    assert (home / ".ingestkit").is_dir()
    proj = home / "proj"
    (proj / "pipelines").mkdir(parents=True)
    (proj / "pipelines" / "ingest_rows.py").write_text(ONE)
    code, out = _run_in(project, proj, "pipelines", home=home)
    assert code == 0, out
    assert f"rootdir: {proj}\n" in out
    code, out = _run_in(project, proj / "pipelines", ".", home=home)
    assert code == 0, out
    assert f"rootdir: {proj} (from the .ingestkit/ folder there" in out  # left by the run above
    assert "2 unchanged" in out
    assert _processors(project) == ["pipelines/ingest_rows.py::process_row"]
    assert not (home / ".ingestkit" / "pgdata").exists()


def test_stray_marker_above_a_vcs_root_does_not_win(project, tmp_path):
    home = tmp_path / "home"
    work = tmp_path / "work"
    repo = work / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "pipelines").mkdir()
    (repo / "pipelines" / "ingest_rows.py").write_text(ONE)
    (work / ".ingestkit").mkdir()  # left by a run in work/
    code, out = _run_in(project, repo, "pipelines", home=home)
    assert code == 0, out
    assert f"rootdir: {repo}\n" in out
    # SPEC §1: the same node ids from the root and from inside pipelines/
    code, out = _run_in(project, repo / "pipelines", ".", home=home)
    assert code == 0, out
    assert f"rootdir: {repo} (from the .ingestkit/ folder there" in out
    assert "2 unchanged" in out
    assert _processors(project) == ["pipelines/ingest_rows.py::process_row"]


def test_config_file_wins_over_a_stray_marker_above(project, tmp_path):
    home = tmp_path / "home"
    work = tmp_path / "work"
    proj = work / "proj"
    (proj / "pipelines").mkdir(parents=True)
    (proj / "pyproject.toml").write_text("[tool.ingestkit]\n")
    (proj / "pipelines" / "ingest_rows.py").write_text(ONE)
    (work / ".ingestkit").mkdir()
    for cwd, arg in ((proj, "pipelines"), (proj / "pipelines", ".")):
        code, out = _run_in(project, cwd, arg, home=home)
        assert code == 0, out
        assert f"rootdir: {proj}, config: pyproject.toml\n" in out
    assert _processors(project) == ["pipelines/ingest_rows.py::process_row"]


def test_rootdir_from_a_marker_only_says_where_it_came_from(project, tmp_path):
    home = tmp_path / "home"
    work = tmp_path / "work"
    (work / "proj").mkdir(parents=True)
    (work / "proj" / "ingest_rows.py").write_text(ONE)
    (work / ".ingestkit").mkdir()  # no config, no VCS root, not home: it still counts
    code, out = _run_in(project, work / "proj", home=home)
    assert code == 0, out
    assert (
        f"rootdir: {work} (from the .ingestkit/ folder there, left by an earlier run;"
        " no config file found)" in out
    )
    assert _processors(project) == ["proj/ingest_rows.py::process_row"]


# -- db.insert (COPY) and db.execute adapt values alike -----------------------

ADAPT = """
import enum
import ipaddress
import ingestkit
from psycopg2.extensions import AsIs, register_adapter

class Color(enum.Enum):
    RED = 1

class Size(str, enum.Enum):
    BIG = "it's big"

class Level(enum.IntEnum):
    HIGH = 3

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

register_adapter(Point, lambda p: AsIs(f"point({p.x}, {p.y})"))
class Cents(int):
    pass

register_adapter(Cents, lambda c: AsIs(f"'{c / 100:.2f}'::numeric"))

VALUES = {
    "color": Color.RED,
    "size": Size.BIG,
    "level": Level.HIGH,
    "levels": [Level.HIGH, 1],
    "point": Point(1, 2),
    "addr": ipaddress.IPv4Address("10.0.0.1"),
    "price": Cents(1250),
}

@ingestkit.fixture(scope="batch", autouse=True)
def target(db):
    db.execute(
        "CREATE TABLE IF NOT EXISTS target (column_name text, path text, color text,"
        " size text, level int, levels int[], point point, addr inet, price numeric)"
    )

@ingestkit.source([{"column": c, "path": p} for c in VALUES for p in ("insert", "execute")],
                  key=lambda r: f"{r['column']}-{r['path']}")
def process_value(record, db):
    column, value = record["column"], VALUES[record["column"]]
    if record["path"] == "insert":
        db.insert("target", {"column_name": column, "path": "insert", column: value})
    else:
        db.execute(
            f"INSERT INTO target (column_name, path, {column}) VALUES (%s, 'execute', %s)",
            (column, value),
        )
"""


def test_insert_and_execute_adapt_values_alike(project):
    project.write("ingest_adapt.py", ADAPT)
    result = project.run()
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 12, "failed": 2}
    failed = project.query(
        "SELECT key, error_type, error_message FROM ingestkit.items"
        " WHERE status = 'failed' ORDER BY key"
    )
    assert [(r["key"], r["error_type"]) for r in failed] == [
        ("color-execute", "ProgrammingError"),
        ("color-insert", "ProgrammingError"),
    ]
    assert failed[0]["error_message"].startswith("can't adapt type 'Color'")
    assert failed[1]["error_message"].startswith(
        "can't adapt type 'Color' (column 'color' of db.insert into 'target')"
    )
    rows = project.query(
        "SELECT path, column_name AS c, coalesce(color, size, level::text, levels::text,"
        " point::text, addr::text, price::text) AS v FROM target ORDER BY c, path"
    )
    stored = {(r["c"], r["path"]): r["v"] for r in rows}
    expected = {
        "size": "it's big",
        "level": "3",
        "levels": "{3,1}",
        "point": "(1,2)",
        "addr": "10.0.0.1/32",
        "price": "12.50",
    }
    assert stored == {(c, p): v for c, v in expected.items() for p in ("execute", "insert")}
    # every record is an item; every succeeded item is one row
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 14
    assert len(rows) == 12


# -- a source-level error is resolved once the source reads again ------------

CSV_SOURCE = """
import ingestkit

@ingestkit.fixture(scope="batch", autouse=True)
def target(db):
    db.execute("CREATE TABLE IF NOT EXISTS target (id int PRIMARY KEY)")

@ingestkit.source(ingestkit.read_csv("drop/rows.csv"), key="id")
def process_row(record, db):
    db.insert("target", {"id": int(record["id"])})
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "workers"])
def test_source_error_is_resolved_once_the_source_reads_again(project, workers):
    project.write("ingest_rows.py", CSV_SOURCE)
    broken = project.run(*workers)
    assert broken.exit_code == 1, broken.output
    assert broken.counts == {"error": 1}
    assert "rows.csv" in broken.output
    project.write("drop/rows.csv", "id\n1\n2\n3\n")
    fixed = project.run(*workers)
    assert fixed.exit_code == 0, fixed.output
    assert fixed.counts == {"succeeded": 3}
    rerun = project.run("--lf", *workers)
    assert rerun.exit_code == 0, rerun.output
    assert "nothing to rerun" in rerun.output
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 4
    assert project.scalar("SELECT count(*) FROM target") == 3
    # the source breaks again: its error is the latest outcome again, and --lf reads it
    (project.root / "drop" / "rows.csv").unlink()
    assert project.run(*workers).counts == {"error": 1}
    again = project.run("--lf", *workers)
    assert again.exit_code == 1, again.output
    assert again.counts == {"error": 1}


# -- --lf with -k and node ids --------------------------------------------------

FAILING = """
import ingestkit

@ingestkit.source([{"id": "1"}, {"id": "2"}], key="id")
def process_x(record):
    if record["id"] == "2":
        raise ValueError("x fails on 2")

@ingestkit.source([{"id": "1"}, {"id": "2"}], key="id")
def process_y(record):
    if record["id"] == "1":
        raise ValueError("y fails on 1")
"""

PASSING = """
import ingestkit

@ingestkit.source([{"id": "1"}], key="id")
def process_ok(record):
    pass
"""


def test_lf_with_k_selecting_nothing_failed_says_nothing_to_rerun(project):
    project.write("ingest_fails.py", FAILING)
    project.write("ingest_passes.py", PASSING)
    assert project.run().exit_code == 1
    result = project.cli("--lf", "-k", "passes")
    assert result.returncode == 0, result.stdout
    assert "no processors collected" not in result.stdout
    assert "nothing to rerun (--lf)" in result.stdout
    assert "2 processors have failed items outside this selection" in result.stdout
    # the selection with failures still reruns them, and only them
    rerun = project.run("--lf", "-k", "process_y")
    assert rerun.exit_code == 1, rerun.output
    assert rerun.counts == {"failed": 1}
    assert "ingest_fails.py::process_y" in rerun.output
    assert "process_x" not in rerun.output


def test_lf_with_a_node_id_does_not_call_the_others_gone(project):
    project.write("ingest_fails.py", FAILING)
    assert project.run().exit_code == 1
    rerun = project.run("--lf", "ingest_fails.py::process_x")
    assert rerun.exit_code == 1, rerun.output
    assert rerun.counts == {"failed": 1}
    assert "no longer exists" not in rerun.output
    # a processor really gone (renamed) is still named
    project.write("ingest_fails.py", FAILING.replace("def process_y", "def process_z"))
    gone = project.run("--lf", "ingest_fails.py::process_x")
    assert (
        "--lf: ingest_fails.py::process_y has failed items but no longer exists" in gone.output
    )
    assert gone.counts == {"failed": 1}


# -- --tb=no keeps a short summary ------------------------------------------------


def test_tb_no_keeps_one_line_per_failure_group(project):
    project.write("ingest_fails.py", FAILING)
    project.write(
        "ingest_more.py",
        """
        import ingestkit

        @ingestkit.source([{"id": str(i)} for i in range(1, 6)], key="id")
        def process_many(record):
            if record["id"] != "1":
                raise KeyError(record["id"])
        """,
    )
    result = project.run("--tb=no")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("FAILED ")]
    assert lines == [
        "FAILED ingest_more.py::process_many: KeyError (4 items), first key '2'",
        "FAILED ingest_fails.py::process_x: ValueError (1 item), first key '2'",
        "FAILED ingest_fails.py::process_y: ValueError (1 item), first key '1'",
    ]
    assert "Traceback" not in result.output
    assert "rerun the failures: ingestkit --lf" in result.output
