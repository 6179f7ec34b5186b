"""Day two without a playbook: `toolkit serve FILE`, then `toolkit models list/inspect/verify/
remove` against what it placed. Real engine, real model, real supervisord."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import (
    GEMMA_SHA256,
    free_port,
    processes_mentioning,
    stop_process,
    wait_http_ok,
)


def processes_under(path: Path) -> list[int]:
    return [pid for pid, _ in processes_mentioning(path)]


class Bench:
    def __init__(self, root: Path):
        self.root, self.data = root, root / "data"
        self.env = {**os.environ, "TOOLKIT_CACHE_DIR": str(root / "cache"),
                    "TOOLKIT_STATE_DIR": str(root / "state")}  # fmt: skip
        self.inventory = root / "hosts.yml"
        self.inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
            "ansible_connection": "local", "toolkit_data_dir": str(self.data)}}}}))  # fmt: skip

    def toolkit(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True,
                              text=True, env=self.env, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory, gemma_gguf):
    bench = Bench(tmp_path_factory.mktemp("serve"))
    bench.port = free_port()
    log = open(bench.root / "serve.log", "w")  # noqa: SIM115
    bench.proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", "serve", str(gemma_gguf), "--port",
         str(bench.port), "--ctx-size", "1024", "--data-dir", str(bench.data)],
        stdout=log, stderr=subprocess.STDOUT, env=bench.env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while "serving; Ctrl-C to stop" not in (bench.root / "serve.log").read_text():
            assert bench.proc.poll() is None, (bench.root / "serve.log").read_text()
            assert time.monotonic() < deadline, (bench.root / "serve.log").read_text()
            time.sleep(0.5)
        yield bench
    finally:
        stop_process(bench.proc)
        log.close()
        for pid in processes_under(bench.data):
            os.kill(pid, signal.SIGKILL)


def test_serve_answers_a_completion(served):
    wait_http_ok(f"http://127.0.0.1:{served.port}/health")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{served.port}/v1", api_key="none")
    reply = client.completions.create(
        model="gemma-3-270m-q4_k_m", prompt="The capital of France is", max_tokens=8
    )
    assert reply.choices[0].text.strip()
    playbook = Path(served.env["TOOLKIT_STATE_DIR"]) / "serve" / "gemma-3-270m-q4_k_m.yml"
    assert GEMMA_SHA256 in playbook.read_text()  # the playbook it wrote, to apply again later


def test_models_list_names_the_service_using_the_file(served):
    out = served.toolkit("models", "list", "-i", str(served.inventory), "--json")
    assert out.returncode == 0, out.stderr
    rows = yaml.safe_load(out.stdout)
    placed = [r for r in rows if r["where"] == "localhost"]
    assert [r["sha256"] for r in placed] == [GEMMA_SHA256]
    assert placed[0]["used_by"] == ["engine-gemma-3-270m-q4-k-m"]
    assert placed[0]["name"] == "gemma-3-270m-q4_k_m.gguf"  # known from the workstation's store


def test_models_inspect_reads_the_gguf(served, gemma_gguf):
    out = served.toolkit("models", "inspect", GEMMA_SHA256[:10], "--json")
    assert out.returncode == 0, out.stderr
    details = yaml.safe_load(out.stdout)
    assert details["architecture"] == "gemma3" and details["trained_context"] == 32768
    assert details["quantization"] == "Q4_K_M" and details["chat_template"] is False


def test_models_verify_and_remove_refused_while_in_use(served):
    out = served.toolkit("models", "verify", "-i", str(served.inventory))
    assert out.returncode == 0 and f"{GEMMA_SHA256[:12]} ok" in out.stdout, out.stdout + out.stderr
    refused = served.toolkit("models", "remove", GEMMA_SHA256[:12], "-i", str(served.inventory))
    assert refused.returncode == 1
    assert "is used by localhost: engine-gemma-3-270m-q4-k-m" in refused.stderr, refused.stderr
    assert (served.data / f"models/sha256-{GEMMA_SHA256}.gguf").is_file()


def test_ctrl_c_stops_everything_and_then_remove_works(served):
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=120) == 0, (served.root / "serve.log").read_text()
    assert processes_under(served.data) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{served.port}/health", timeout=2)
    # The definitions still name the file: remove refuses until the service is gone for good.
    for conf in (served.data / "supervisor/programs").glob("*.conf"):
        conf.unlink()
    out = served.toolkit("models", "remove", GEMMA_SHA256[:12], "-i", str(served.inventory))
    assert out.returncode == 0, out.stderr
    assert not (served.data / f"models/sha256-{GEMMA_SHA256}.gguf").exists()
