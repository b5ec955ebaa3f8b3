"""Leases that always expire (docs/workers.md, "Leases"; issue #20).

A worker that holds a claim and then stops answering, paused (SIGSTOP: a frozen
VM, a stopped container) or cut off from the server by the network, loses the
claim within its lease: another worker commits the task, the paused worker's
late commit is rejected, and every key is still committed exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psycopg2.extensions
import pytest

from .test_workers import (
    N,
    _leaders,
    _no_process_left_behind,  # noqa: F401  (autouse: no process left behind)
    _started,
    alive,
    assert_consistent,
    assert_exact,
    assert_queue_empty,
    chunk_backend,
    committed_by,
    finish,
    in_transaction,
    running_batch,
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
def test_leader_does_not_wait_for_a_paused_worker_once_the_queue_is_empty(project):
    """Issue 20: a paused child kept the leader waiting after the last task was done."""
    write_pipeline(project, sleep=0.01)
    leader = spawn(project, "-n", "2", "--lease", str(LEASE))
    victim, _other = workers_of(leader, 2)
    chunk = chunk_backend(project, victim)
    wait_until(lambda: in_transaction(project, chunk), what="the victim inside a chunk")
    os.kill(victim, signal.SIGSTOP)
    try:
        code = leader.wait(timeout=60)  # the victim stays paused meanwhile
    finally:
        os.kill(victim, signal.SIGCONT)  # it holds the output pipe open (its stderr)
    out = finish(leader)
    assert code == 0, out
    assert summary_counts(out) == f"{N} succeeded"
    assert f"(pid {victim}) is paused; the leader did not wait for it" in out, out
    assert_exact(project)
    assert_queue_empty(project)


@pytest.mark.slow
def test_leader_counts_the_workers_serving_the_batch(project):
    """The queue-ahead is sized from the live workers (the shared worker lock)."""
    from ingestkit.dispatch import Queue

    write_pipeline(project, sleep=0.02)
    leader = spawn(project, "-n", "2")
    workers_of(leader, 2)
    batch = running_batch(project)
    lock_key = project.scalar("SELECT lock_key FROM ingestkit.batches WHERE id = %s", (batch,))
    conn = psycopg2.connect(project.dsn)
    conn.autocommit = True
    try:
        queue = Queue(conn, batch)
        wait_until(lambda: queue.live_workers(lock_key) == 2, what="2 live workers")
    finally:
        conn.close()
    finish(leader)
    assert leader.returncode == 0

@pytest.mark.slow
def test_paused_joined_worker_alone_with_the_leader(project):
    """The only worker with a claim is a joined one, paused: the leader's beat ends its
    lease, and a second worker started later takes over."""
    write_pipeline(project, sleep=0.01)
    leader = spawn(project, "-n", "1", "--lease", str(LEASE))
    (local,) = workers_of(leader, 1)
    os.kill(local, signal.SIGSTOP)  # before it claims anything
    try:
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


# -- a remote worker, cut off ------------------------------------------------


class Relay:
    """Forwards TCP connections from ``listen`` to the server (which listens on
    127.0.0.1 only), as a proxy between a remote worker and the database would."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Network:
    """A network namespace holding only ``lo`` and one end of a veth pair, whose
    other end (in this namespace) a :class:`Relay` listens on."""

    def __init__(self, project) -> None:
        tag = os.getpid() % 100000
        self.name, self.host_dev, self.peer_dev = f"ikl{tag}", f"iklh{tag}", f"ikln{tag}"
        net = f"10.213.{tag % 250}"
        self.host, self.peer = f"{net}.1", f"{net}.2"
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.peer_dev)
            ip("link", "set", self.peer_dev, "netns", self.name)
            ip("addr", "add", f"{self.host}/30", "dev", self.host_dev)
            ip("link", "set", self.host_dev, "up")
            ip("-n", self.name, "addr", "add", f"{self.peer}/30", "dev", self.peer_dev)
            ip("-n", self.name, "link", "set", self.peer_dev, "up")
            ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        params = psycopg2.extensions.parse_dsn(project.dsn)
        self.relay = Relay((self.host, 0), (params["host"], int(params.get("port", 5432))))
        port = self.relay.server.getsockname()[1]
        self.dsn = psycopg2.extensions.make_dsn(project.dsn, host=self.host, port=port)

    def drop(self, way: str) -> None:
        """Drop packets silently: neighbour entries naming a MAC address nobody has."""
        if way in ("both", "to server"):
            ip(
                *f"-n {self.name} neigh replace {self.host} lladdr 02:00:00:00:00:01".split(),
                *f"dev {self.peer_dev} nud permanent".split(),
            )
        if way in ("both", "from server"):
            ip(
                *f"neigh replace {self.peer} lladdr 02:00:00:00:00:02".split(),
                *f"dev {self.host_dev} nud permanent".split(),
            )

    def worker(self, project, batch: str, *args: str) -> subprocess.Popen:
        """``ingestkit worker`` started inside the namespace, on the project's folder."""
        argv = ["ip", "netns", "exec", self.name, sys.executable, "-m", "ingestkit"]
        argv += ["--dsn", self.dsn, "worker", "--batch", batch, *args]
        proc = subprocess.Popen(
            argv,
            cwd=project.root,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _started.append(proc.pid)  # ip netns exec execs the worker: same pid
        _leaders.append(proc)
        return proc

    def close(self) -> None:
        if hasattr(self, "relay"):
            self.relay.close()
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", self.host_dev)
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("netns", "del", self.name)


@pytest.fixture
def network(project):
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    try:
        net = Network(project)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a network namespace: {getattr(exc, 'stderr', exc)}")
    yield net
    net.close()


@pytest.mark.slow
@pytest.mark.parametrize("way", ["both", "to server", "from server"])
def test_partitioned_remote_worker_loses_its_claim(project, network, way):
    write_pipeline(project, sleep=0.01)
    leader = spawn(project, "-n", "1", "--lease", str(LEASE))
    (local,) = workers_of(leader, 1)
    remote = network.worker(project, running_batch(project)[:8])
    chunk = chunk_backend(project, remote.pid)
    wait_until(lambda: in_transaction(project, chunk), what="the remote worker inside a chunk")
    network.drop(way)
    cut = time.monotonic()
    wait_until(lambda: rows_in_t(project) == N, timeout=60, what="every row committed")
    recovered = time.monotonic() - cut
    out = finish(leader)
    # the remote worker notices by itself (keepalives, tcp_user_timeout): no hang
    # for the kernel's tcp_retries2 (~15 minutes)
    remote_out = finish(remote, timeout=120)
    left = time.monotonic() - cut
    print(f"{way}: claims back after {recovered:.1f} s, remote worker left after {left:.1f} s")

    assert leader.returncode == 0, out
    assert summary_counts(out) == f"{N} succeeded"
    assert "Traceback" not in remote_out, remote_out
    assert_exact(project)
    assert committed_by(project, local) + committed_by(project, remote.pid) == N
    assert_queue_empty(project)


@pytest.mark.slow
def test_leader_left_with_a_partitioned_worker_only(project, network):
    """The only local worker is killed and the remote one cut off: the leader ends the
    remote worker's lease and stops the batch, instead of waiting for it for hours."""
    write_pipeline(project, sleep=0.01)
    leader = spawn(project, "-n", "1", "--lease", str(LEASE))
    (local,) = workers_of(leader, 1)
    remote = network.worker(project, running_batch(project)[:8])
    chunk = chunk_backend(project, remote.pid)
    wait_until(lambda: in_transaction(project, chunk), what="the remote worker inside a chunk")
    network.drop("both")
    os.kill(local, signal.SIGKILL)
    out = finish(leader, timeout=60)
    finish(remote, timeout=120)

    assert leader.returncode == 2, out
    assert "every worker exited" in out, out
    assert not alive(remote.pid)
    done = assert_consistent(project)
    again = project.cli(env={"IK_SLEEP": "0"})
    assert again.returncode == 0, again.stdout
    assert summary_counts(again.stdout) == f"{N - done} succeeded, {done} unchanged"
    assert_exact(project)


def test_a_lease_sweep_that_fails_is_said_not_swallowed(project):
    """A sweep the server answers with an error (once, a stray merge marker in its
    query) ends no lease: the batch says so instead of beating on silently."""
    write_pipeline(project, sleep=0.001)
    project.write(
        "conftest.py",
        "import psycopg2\n"
        "import ingestkit.lease\n\n"
        "def _broken(conn, batch_id, seconds):\n"
        "    with conn.cursor() as cur:\n"
        "        cur.execute('SELECT FROM no_such_table')\n\n"
        "ingestkit.lease.sweep = _broken\n",
    )
    out = finish(spawn(project, "-n", "2"))
    assert "the workers' leases could not be enforced" in out, out
    assert 'relation "no_such_table" does not exist' in out, out
