"""``python -m proxy --workers N``: N real processes on one port under a supervising parent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, stop_process
from tests.upstream_standin import ProxyProcess, routes_for


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``, by a scan of /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def workers_proxy(standin, tmp_path, proxy_server):
    routes = routes_for("m", standin.url)
    proxy = ProxyProcess(routes, tmp_path, args=("--workers", "2"), server=proxy_server)
    assert wait_for(lambda: len(children_of(proxy.process.pid)) == 2)
    yield proxy
    stop_process(proxy.process)


def chat(url: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10)


def test_workers_share_the_port(workers_proxy, standin):
    for _ in range(20):  # a new connection each: the kernel spreads them over the workers
        assert chat(workers_proxy.url).status_code == 200
    assert standin.requests == 20
    # every worker checks health on its own, and answers /health
    assert httpx.get(workers_proxy.url + "/health").json()["status"] == "ok"


def test_sigterm_to_the_parent_stops_every_worker(workers_proxy):
    parent = workers_proxy.process.pid
    workers = children_of(parent)
    assert len(workers) == 2
    os.kill(parent, signal.SIGTERM)  # the parent alone, not its process group
    assert workers_proxy.process.wait(timeout=40) == 0
    assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=5), "orphans left"


def test_a_crashed_worker_is_restarted(workers_proxy):
    parent = workers_proxy.process.pid
    before = children_of(parent)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:  # one reading of the process table: two readings could disagree
        now = children_of(parent)
        return len(now) == 2 and victim not in now

    assert wait_for(replaced), workers_proxy.log()
    after = children_of(parent)
    assert after - before, "no new worker\n" + workers_proxy.log()
    for _ in range(10):
        assert chat(workers_proxy.url).status_code == 200
    assert "ended (signal 9)" in workers_proxy.log()


def test_workers_die_with_a_killed_parent(workers_proxy):
    parent = workers_proxy.process.pid
    workers = children_of(parent)
    os.kill(parent, signal.SIGKILL)  # no chance to stop them: the kernel tells them (PDEATHSIG)
    workers_proxy.process.wait(timeout=10)
    assert wait_for(lambda: not any(alive(pid) for pid in workers), timeout=40), "orphans left"


def test_sighup_to_the_parent_reloads_every_worker(workers_proxy, standin):
    workers_proxy.write_routes(routes_for("m", standin.url, aliases=["renamed"]))
    os.kill(workers_proxy.process.pid, signal.SIGHUP)
    assert wait_for(lambda: workers_proxy.log().count("routes reloaded") >= 2)
    body = {"model": "renamed", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(6):
        response = httpx.post(workers_proxy.url + "/v1/chat/completions", json=body, timeout=10)
        assert response.status_code == 200


def test_a_taken_port_is_an_error_before_any_worker(standin, tmp_path):
    routes = tmp_path / "routes.yml"
    routes.write_text(f"models:\n  m:\n    backends: [{{url: '{standin.url}'}}]\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "proxy", "--routes", str(routes), "--port", str(port)]
        done = subprocess.run(
            [*argv, "--workers", "2"], cwd=REPO, capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 2
    assert "cannot listen" in done.stderr


def test_workers_that_keep_crashing_end_the_parent_with_status_1():
    code = (
        "import sys\n"
        "from proxy.workers import run_workers\n"
        "def worker(sock):\n"
        "    raise RuntimeError('broken at start')\n"
        f"sys.exit(run_workers(worker, '127.0.0.1', {free_port()}, 2))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "broken at start" in done.stderr
    assert "workers keep dying at start" in done.stderr
