"""``playbooks/runtimes.yml`` as shipped: llama.cpp, Ollama and WasmEdge + LlamaEdge on one host
behind one proxy, applied with its ``runtimes_mirror`` variable pointed at this test's mirror.

llama.cpp is the real engine (the xllamacpp wheel). Ollama and WasmEdge/LlamaEdge are STAND-INS
(tests/ollama_standin.py, tests/wasmedge_standin.py) packed in archives laid out as the real
releases and installed through toolkit's real ``release`` path; they answer with real tokens
from llama.cpp. The only changes to the playbook: the proxy's port (a free one) and the mirror.
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.runtime_releases import ReleaseMirror
from tests.runtime_site import RuntimeSite, recap

MODELS = ("gemma-3-270m", "gemma3-ollama", "gemma-3-270m-wasm")


@pytest.fixture(scope="module")
def site(tmp_path_factory, gemma_gguf):
    plays = yaml.safe_load((REPO / "playbooks/runtimes.yml").read_text())
    port = free_port()
    plays[0]["proxy"]["port"] = port
    llamacpp = next(m for m in plays[0]["models"] if m["runtime"] == "llamacpp")
    llamacpp["args"]["threads"] = 1
    with ReleaseMirror() as mirror:
        mirror.add_ollama("0.31.1", {"gemma3:270m": str(gemma_gguf)})
        mirror.add_wasmedge("0.14.1")
        mirror.add_llamaedge("0.28.1")
        ws = RuntimeSite(tmp_path_factory.mktemp("runtimes"), plays, gguf=gemma_gguf)
        ws.port, ws.mirror = port, mirror
        ws.extra = ("-e", f"runtimes_mirror={mirror.url}")
        ws.first = ws.apply(*ws.extra)
        try:
            yield ws
        finally:
            ws.down()
            ws.kill_leftovers()


def test_one_apply_serves_each_runtimes_model_and_verifies_each(site):
    out = site.first.stdout + site.first.stderr
    assert site.first.returncode == 0, out
    assert recap(out)[2] == 0
    for label in ("llama.cpp: pip", "Ollama: release", "WasmEdge+LlamaEdge: release"):
        assert label in out, out
    for name in MODELS:
        assert re.search(rf"verified\s+{re.escape(name)}: answered", out), out


def test_openai_client_reaches_every_model_through_one_proxy(site):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{site.port}/v1", api_key="unused")
    assert set(MODELS) <= {m.id for m in client.models.list().data}
    for name in MODELS:
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8, temperature=0,
        )  # fmt: skip
        assert reply.choices[0].message.content.strip(), name
    routes = (site.data / "proxy/routes.yml").read_text()
    for runtime in ("llamacpp", "ollama", "llamaedge"):
        assert re.search(rf'runtime: "?{runtime}"?', routes), routes


def test_second_apply_changes_nothing(site):
    again = site.apply(*site.extra)
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again.stdout)[1] == 0, again.stdout


def test_down_stops_every_runtime(site):
    assert site.processes()
    down = site.down()
    assert down.returncode == 0, down.stdout + down.stderr
    assert site.processes() == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{site.port}/health", timeout=2)
