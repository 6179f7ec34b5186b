"""WasmEdge + LlamaEdge (``runtime: wasmedge``): install from a release mirror, serve, verify.

WasmEdge and LlamaEdge cannot be downloaded here: the archives are built by
tests/runtime_releases.py, laid out as the real ones, holding STAND-INS (tests/wasmedge_standin.py
as ``bin/wasmedge``, a stand-in ``llama-api-server.wasm``) that answer with real tokens from
llama.cpp. toolkit installs them through its real ``release`` path from a loopback mirror.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
from pathlib import Path

import openai
import pytest

from tests.conftest import GEMMA_SHA256, free_port
from tests.runtime_releases import ReleaseMirror
from tests.runtime_site import RuntimeSite, recap
from toolkit.errors import ConfigError
from toolkit.runtimes import prompt_templates
from toolkit.site import load_site

GEMMA3_JINJA = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n"
LLAMA3_JINJA = "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>"


@pytest.mark.parametrize(
    "template, architecture, expected",
    [
        (GEMMA3_JINJA, "gemma3", "gemma-3"),
        (GEMMA3_JINJA, "gemma2", "gemma-instruct"),
        (LLAMA3_JINJA, "llama", "llama-3-chat"),
        ("<|im_start|>system<|im_sep|>", "phi3", "phi-4-chat"),
        ("<|im_start|>user\n{{ content }}<|im_end|>", "qwen2", "chatml"),
        ("[INST] <<SYS>>\n{{ system }}<</SYS>>", "llama", "llama-2-chat"),
        ("[INST] {{ content }} [/INST]", "llama", "mistral-instruct"),
        ("<|user|>\n{{ c }}<|end|>\n<|assistant|>", "phi3", "phi-3-chat"),
        ("<|start|>assistant<|channel|>final", "gpt-oss", "gpt-oss"),
        (None, "bert", "embedding"),
        ("### Instruction: {{ c }}", "llama", None),
        (None, "gemma3", None),
    ],
)
def test_prompt_template_is_chosen_from_the_chat_templates_markers(
    template, architecture, expected
):
    chosen = prompt_templates.choose(template, architecture)
    assert chosen == expected
    assert chosen is None or chosen in prompt_templates.LLAMAEDGE_TEMPLATES


def write_play(tmp_path: Path, model_extra: dict, runtime: dict | None = None) -> Path:
    import yaml

    model = {
        "name": "m",
        "runtime": "wasmedge",
        "source": {"path": "/nonexistent.gguf"},
        "sha256": GEMMA_SHA256,
        **model_extra,
    }
    play = [{"hosts": "all", "runtimes": {"wasmedge": runtime or {}}, "models": [model]}]
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n")
    return path


def test_unknown_prompt_template_is_refused_with_file_line_and_did_you_mean(tmp_path):
    path = write_play(tmp_path, {"args": {"prompt_template": "gemma3"}})
    with pytest.raises(ConfigError) as caught:
        load_site(path, tmp_path / "hosts.yml")
    message = str(caught.value)
    assert f"{path}:" in message and re.search(r":\d+:\d+: ", message), message
    assert "gemma3" in message and 'did you mean "gemma-3"' in message, message


def test_unknown_arg_is_refused_with_did_you_mean(tmp_path):
    path = write_play(tmp_path, {"args": {"ctx_sise": 2048}})
    with pytest.raises(ConfigError) as caught:
        load_site(path, tmp_path / "hosts.yml")
    assert 'unknown key "ctx_sise"' in str(caught.value)
    assert "ctx_size" in str(caught.value)


def test_port_flags_are_toolkits_to_set(tmp_path):
    path = write_play(tmp_path, {"args": {"extra": ["--port", "9000"]}})
    with pytest.raises(ConfigError) as caught:
        load_site(path, tmp_path / "hosts.yml")
    assert "--port is set by toolkit" in str(caught.value)


def unpack(archive: bytes, dest: Path) -> None:
    import io

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="tar")


def test_standin_refuses_nn_preload_with_a_plugin_of_another_version(tmp_path, gemma_gguf):
    """The stand-in fails as WasmEdge does when the wasi_nn plugin is not loaded."""
    with ReleaseMirror() as mirror:
        mirror.add_wasmedge("0.15.0", plugin_version="0.14.1")
        base = "/WasmEdge/WasmEdge/releases/download/0.15.0"
        files = mirror.files
        unpack(files[f"{base}/WasmEdge-0.15.0-ubuntu20.04_x86_64.tar.gz"], tmp_path)
        unpack(
            files[f"{base}/WasmEdge-plugin-wasi_nn-ggml-0.15.0-ubuntu20.04_x86_64.tar.gz"],
            tmp_path / "plugin",
        )
    version = subprocess.run([tmp_path / "bin/wasmedge", "--version"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert version.stdout.strip() == "wasmedge version 0.15.0"
    run = subprocess.run(
        [tmp_path / "bin/wasmedge", "--dir", ".:.", "--nn-preload",
         f"default:GGML:AUTO:{gemma_gguf}", "llama-api-server.wasm"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    assert "unknown option: nn-preload" in run.stderr
    assert "API version" in run.stderr
