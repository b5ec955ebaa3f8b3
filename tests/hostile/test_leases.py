"""Leases that always expire (docs/workers.md, "Leases"; issue #20).

A worker that holds a claim and then stops answering, paused (SIGSTOP: a frozen
VM, a stopped container) or cut off from the server by the network, loses the
claim within its lease: another worker commits the task, the paused worker's
late commit is rejected, and every key is still committed exactly once.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from .test_workers import (
    N,
    _no_process_left_behind,  # noqa: F401  (autouse: no process left behind)
    assert_exact,
    assert_queue_empty,
    chunk_backend,
    committed_by,
    finish,
    in_transaction,
    spawn,
    summary_counts,
    wait_until,
    workers_of,
    write_pipeline,
)

#: A short lease, so the tests wait seconds, not the default 30.
LEASE = 3.0


def backend_alive(project, backend: int) -> bool:
    return bool(project.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)))


def rows_in_t(project) -> int:
    return project.scalar("SELECT count(*) FROM t")


@pytest.mark.slow
def test_paused_worker_loses_its_claim(project):
    write_pipeline(project, sleep=0.01)
    leader = spawn(project, "-n", "2", "--lease", str(LEASE))
    victim, other = workers_of(leader, 2)
    chunk = chunk_backend(project, victim)
    wait_until(lambda: in_transaction(project, chunk), what="the victim inside a chunk")
    os.kill(victim, signal.SIGSTOP)
    try:
        paused = time.monotonic()
        # the other worker takes the paused one's task once its lease is over
        wait_until(lambda: rows_in_t(project) == N, timeout=60, what="every row committed")
        recovered = time.monotonic() - paused
        assert not backend_alive(project, chunk), "the paused worker's connection is still open"
    finally:
        os.kill(victim, signal.SIGCONT)  # its late commit fails: its connection is gone
    out = finish(leader)
    print(f"recovered {recovered:.1f} s after the pause (lease {LEASE:g} s)")

    assert leader.returncode == 0, out
    assert summary_counts(out) == f"{N} succeeded"
    assert_exact(project)
    assert committed_by(project, victim) + committed_by(project, other) == N
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == N
    assert_queue_empty(project)


@pytest.mark.slow
def test_paused_joined_worker_alone_with_the_leader(project):
    """The only worker with a claim is a joined one, paused: the leader's beat ends its
    lease, and a second worker started later takes over."""
    write_pipeline(project, sleep=0.01)
    leader = spawn(project, "-n", "1", "--lease", str(LEASE))
    (local,) = workers_of(leader, 1)
    os.kill(local, signal.SIGSTOP)  # before it claims anything
    try:
        from .test_workers import running_batch

        batch = running_batch(project)
        joined = spawn(project, "worker", "--batch", batch[:8])
        chunk = chunk_backend(project, joined.pid)
        wait_until(lambda: in_transaction(project, chunk), what="the joined worker inside a chunk")
        os.kill(joined.pid, signal.SIGSTOP)
        os.kill(local, signal.SIGCONT)
        wait_until(lambda: not backend_alive(project, chunk), timeout=30, what="the lease ended")
        wait_until(lambda: rows_in_t(project) == N, timeout=60, what="every row committed")
    finally:
        os.kill(local, signal.SIGCONT)
        os.kill(joined.pid, signal.SIGCONT)
    out = finish(leader)
    finish(joined)
    assert leader.returncode == 0, out
    assert summary_counts(out) == f"{N} succeeded"
    assert_exact(project)
    assert_queue_empty(project)


def test_lease_is_a_number_of_seconds(project):
    write_pipeline(project, n=1)
    result = project.cli("-n", "1", "--lease", "0.5")
    assert result.returncode == 4, result.stdout
    assert "--lease" in result.stdout and "between 1 and 86400" in result.stdout
    assert "Traceback" not in result.stdout
