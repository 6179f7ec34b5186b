"""End to end: `toolkit apply playbooks/site.yml` on this machine, all real.

Real CLI, real virtualenv with the xllamacpp engine, the real Gemma model from PyPI, real
supervisord, real proxy; the official openai client talks to the result. Everything lives in a
temporary data dir and on free ports, and `toolkit down` must leave no process behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import GEMMA_SHA256, REPO, free_port, processes_mentioning
from toolkit.models.store import hash_file

GEMMA = "gemma-3-270m"


class Workspace:
    """A temporary data dir, cache, state dir, playbook copy and inventory for one site."""

    def __init__(self, root: Path, proxy_port: int, sha256: str | None = None):
        self.root = root
        self.data = root / "data"
        self.port = proxy_port
        plays = yaml.safe_load((REPO / "playbooks/site.yml").read_text())
        plays[0]["proxy"]["port"] = proxy_port
        if sha256:
            plays[0]["models"][0]["sha256"] = sha256
        self.playbook = root / "site.yml"
        self.playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
        self.inventory = root / "hosts.yml"
        self.inventory.write_text(
            yaml.safe_dump(
                {
                    "all": {
                        "hosts": {
                            "localhost": {
                                "ansible_connection": "local",
                                "toolkit_data_dir": str(self.data),
                            }
                        }
                    }
                }
            )
        )
        self.env = {
            **os.environ,
            "TOOLKIT_CACHE_DIR": str(root / "cache"),
            "TOOLKIT_STATE_DIR": str(root / "state"),
        }

    def toolkit(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "toolkit.cli", *args, "-i", str(self.inventory)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )

    def apply(self, *extra: str) -> subprocess.CompletedProcess:
        return self.toolkit("apply", str(self.playbook), *extra)

    def supervisor_pids(self) -> dict[str, int]:
        out = subprocess.run(
            [str(self.data / "venv/bin/supervisorctl"), "-c",
             str(self.data / "supervisor/supervisord.conf"), "status"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+RUNNING\s+pid (\d+)", out, re.M)}

    def processes(self) -> list[tuple[int, str]]:
        """Every process on this machine whose command line mentions this data dir."""
        return processes_mentioning(self.data)


@contextlib.contextmanager
def applied_site(root: Path, args: dict, *apply_args: str) -> Iterator[Workspace]:
    """The quick-start site with the demo model's args replaced, applied once (``.first``), and
    brought down afterwards with nothing left running."""
    ws = Workspace(root, free_port())
    plays = yaml.safe_load(ws.playbook.read_text())
    plays[0]["models"][0]["args"] = args
    ws.playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    ws.first = ws.apply(*apply_args)
    try:
        yield ws
    finally:
        ws.toolkit("down", str(ws.playbook))
        for pid, _ in ws.processes():
            os.kill(pid, signal.SIGKILL)


def recap_counts(output: str) -> tuple[int, int, int]:
    match = re.search(
        r"^localhost\s+ok=(\d+)\s+(?:would change|changed)=(\d+)\s+failed=(\d+)", output, re.M
    )
    assert match, output
    return int(match[1]), int(match[2]), int(match[3])


def wait_for(predicate, what: str, attempts: int = 120) -> None:
    delay = 0.05
    for _ in range(attempts):
        if predicate():
            return
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("site"), free_port())
    first = ws.apply()
    ws.first = first
    try:
        yield ws
    finally:
        ws.toolkit("down", str(ws.playbook))
        for pid, _ in ws.processes():  # should be none; never leave a daemon behind
            os.kill(pid, signal.SIGKILL)


def test_first_apply_converges_and_prints_endpoint(site):
    out = site.first.stdout + site.first.stderr
    assert site.first.returncode == 0, out
    ok, changed, failed = recap_counts(out)
    assert changed > 0 and failed == 0
    assert f"http://127.0.0.1:{site.port}/v1" in out
    assert "curl " in out
    assert re.search(rf"verified\s+{GEMMA}: answered in [\d.]+ s, \d+ tokens, [\d.]+ tokens/s", out)
    placed = (
        site.data
        / "models"
        / f"sha256-{'a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818'}.gguf"
    )
    assert placed.stat().st_size > 200_000_000


def test_openai_client_chats_and_streams_through_the_proxy(site):
    # greedy decoding: sampled, the small model now and then ends its turn at once (empty text)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{site.port}/v1", api_key="unused")
    assert GEMMA in [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=16,
        temperature=0,
    )
    assert reply.choices[0].message.content.strip()
    chunks = list(
        client.chat.completions.create(
            model=GEMMA,
            messages=[{"role": "user", "content": "Count to five."}],
            max_tokens=16,
            stream=True,
            temperature=0,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text.strip()
    completion = client.completions.create(
        model=GEMMA, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert completion.choices[0].text.strip()


def test_unknown_model_is_an_openai_404_naming_the_models(site):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{site.port}/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert GEMMA in str(caught.value)


def test_second_apply_changes_nothing_and_restarts_nothing(site):
    before = site.supervisor_pids()
    assert set(before) == {f"engine-{GEMMA}", "proxy"}
    again = site.apply()
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap_counts(again.stdout)[1] == 0
    assert site.supervisor_pids() == before
    check = site.apply("--check")
    assert check.returncode == 0 and recap_counts(check.stdout)[1] == 0


def test_check_reports_pending_changes_and_changes_nothing(site):
    routes = site.data / "proxy/routes.yml"
    original = routes.read_bytes()
    routes.write_text("models: {}\n")
    try:
        check = site.apply("--check", "--diff")
        assert check.returncode == 2, check.stdout + check.stderr
        assert "file:proxy/routes.yml" in check.stdout
        assert "+    backends:" in check.stdout  # the diff shows what would come back
        assert routes.read_text() == "models: {}\n"
    finally:
        routes.write_bytes(original)


def test_verify_checksums_finds_and_replaces_a_damaged_model(site):
    placed = site.data / "models" / f"sha256-{GEMMA_SHA256}.gguf"
    stat = placed.stat()
    with placed.open("r+b") as model:  # same size, same mtime: only a hash can tell
        model.seek(stat.st_size // 2)
        byte = model.read(1)
        model.seek(stat.st_size // 2)
        model.write(bytes([byte[0] ^ 0xFF]))
    os.utime(placed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    trusting = site.apply("--check")
    assert trusting.returncode == 0, trusting.stdout  # the record still matches size and mtime
    checked = site.apply("--verify-checksums")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "model:gemma-3-270m: replace: sha256 on the host is" in checked.stdout
    assert hash_file(placed)[0] == GEMMA_SHA256


def test_engine_killed_is_restarted_and_healthy_again(site):
    # the engine in the routes file: the model's primary slot, or its alternate after a switch
    # (the damaged model replaced above restarts the engine in its other slot)
    routes = yaml.safe_load((site.data / "proxy/routes.yml").read_text())
    [backend] = routes["models"][GEMMA]["backends"]
    running = site.supervisor_pids()
    [engine] = [name for name in running if name.startswith(f"engine-{GEMMA}")]
    old_pid = running[engine]
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: site.supervisor_pids().get(engine, old_pid) != old_pid, "a new engine pid")

    def healthy() -> bool:
        try:
            return httpx.get(f"{backend['url']}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, "the restarted engine's /health")


def test_down_leaves_no_process_behind(site):
    assert site.processes(), "apply should have left services running"
    down = site.toolkit("down", str(site.playbook))
    assert down.returncode == 0, down.stdout + down.stderr
    assert site.processes() == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{site.port}/health", timeout=2)


def test_wrong_sha256_fails_the_host_and_leaves_no_file(tmp_path):
    ws = Workspace(tmp_path, free_port(), sha256="0" * 64)
    result = ws.apply()
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert re.search(r"localhost: FAILED: .*sha256", out, re.I), out
    assert recap_counts(out)[2] == 1
    store = ws.root / "cache" / "models"
    leftovers = [p for p in store.rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert leftovers == []
    assert not (ws.data / "models").exists() or list((ws.data / "models").iterdir()) == []
    assert ws.processes() == []


def test_a_llama_server_on_path_is_used_as_it_is(site, tmp_path):
    """``install: auto`` with a llama-server on PATH: that one is started, nothing is pip-installed
    for it. The llama-server here is a real engine: llama.cpp's server from the xllamacpp wheel,
    behind the same command line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    server = bin_dir / "llama-server"
    shim = REPO / "toolkit/runtimes/xllamacpp_server.py"
    server.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{shim}" "$@"\n')
    server.chmod(0o755)
    (tmp_path / "site").mkdir()
    ws = Workspace(tmp_path / "site", free_port())
    ws.env["PATH"] = f"{bin_dir}{os.pathsep}{ws.env['PATH']}"
    ws.env["TOOLKIT_CACHE_DIR"] = site.env["TOOLKIT_CACHE_DIR"]  # the model is there already
    try:
        result = ws.apply()
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert re.search(rf"verified\s+{GEMMA}: answered", out), out
        programs = "".join(p.read_text() for p in (ws.data / "supervisor").rglob("*.conf"))
        assert f"command={server} -m " in programs, programs
        assert not list((ws.data / "venv").glob("lib/python*/site-packages/xllamacpp"))
    finally:
        ws.toolkit("down", str(ws.playbook))
        for pid, _ in ws.processes():
            os.kill(pid, signal.SIGKILL)
