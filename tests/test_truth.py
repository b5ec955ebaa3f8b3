"""Issue 13, runtime truth: what ingestkit records and reports is what happened."""

from __future__ import annotations

QUICK = """
import ingestkit

def process_once(db):
    db.execute("SELECT 1")
"""


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
