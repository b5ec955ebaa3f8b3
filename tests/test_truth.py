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
