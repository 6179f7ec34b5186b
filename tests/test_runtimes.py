"""The runtime plugin mechanism: the core never names a runtime, and a runtime's schema, install
choice, services and routes come from its own module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toolkit.desired import design_host, render_routes
from toolkit.errors import ConfigError
from toolkit.hosts.facts import Facts
from toolkit.inventory import Host
from toolkit.runtimes import RUNTIMES
from toolkit.runtimes.base import Ports
from toolkit.site import load_playbook

REPO = Path(__file__).resolve().parent.parent
SHA = "a" * 64
RUNTIME_WORDS = re.compile(r"""["'](llamacpp|ollama|wasmedge|llama-server|xllamacpp)["']""")


def test_nothing_outside_runtimes_names_a_runtime() -> None:
    """A runtime is one module under toolkit/runtimes/: the core loops over RUNTIMES."""
    leaks = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "toolkit").rglob("*.py"))
        if "runtimes" not in path.relative_to(REPO / "toolkit").parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if RUNTIME_WORDS.search(line)
    ]
    assert not leaks, "\n".join(leaks)


def test_every_runtime_declares_its_schema() -> None:
    for name, runtime in RUNTIMES.items():
        assert runtime.name == name
        assert runtime.label and runtime.strategies and "auto" in runtime.strategies


def play(tmp_path: Path, models: str, runtimes: str = "llamacpp: {install: pip}", proxy=True):
    text = f"- hosts: all\n  runtimes: {{{runtimes}}}\n  models:\n{models}" + (
        "  proxy: {port: 9000}\n" if proxy else ""
    )
    path = tmp_path / "site.yml"
    path.write_text(text)
    return load_playbook(path)[0]


def model(name: str, args: str = "{}", port: str = "") -> str:
    extra = f", port: {port}" if port else ""
    return (
        f"    - {{name: {name}, runtime: llamacpp, source: {{url: 'http://x/{name}.gguf'}}, "
        f"sha256: {SHA}, args: {args}{extra}}}\n"
    )


FACTS = Facts(data_dir="/srv/tk", python3="/usr/bin/python3", uid=1000, cpus=2)


def test_llamacpp_design_one_engine_per_model_ports_after_the_proxy(tmp_path) -> None:
    p = play(tmp_path, model("a", "{ctx_size: 4096, parallel: 2}") + model("b", port="9001"))
    design = design_host(p, Host("h", {}, ["all"]), FACTS)
    assert [s.port for s in design.served] == [9002, 9001]
    engine_a = design.served[0].service
    assert engine_a.argv[:2] == ["/srv/tk/venv/bin/python", "/srv/tk/bin/xllamacpp_server.py"]
    assert "-c" in engine_a.argv and "4096" in engine_a.argv
    assert engine_a.health_url == "http://127.0.0.1:9002/health"
    assert "model:a" in engine_a.inputs and "file:bin/xllamacpp_server.py" in engine_a.inputs
    assert RUNTIMES["llamacpp"].capabilities(design.served[0].model) == {"max_context": 2048}
    assert design.served[0].backend == {"url": "http://127.0.0.1:9002", "runtime": "llamacpp"}
    assert design.pip == ["xllamacpp"]
    assert [s.name for s in design.services] == ["engine-a", "engine-b", "proxy"]
    ids = [r.id for r in design.resources]
    assert ids.index("model:a") < ids.index("runtime:venv") < ids.index("services")


def test_present_uses_the_found_server_and_says_why(tmp_path) -> None:
    p = play(tmp_path, model("a"), runtimes="llamacpp: {install: auto}")
    facts = Facts(**{**FACTS.__dict__, "binaries": {"llama-server": "/usr/bin/llama-server"}})
    design = design_host(p, Host("h", {}, ["all"]), facts)
    install = design.installs["llamacpp"]
    assert install.strategy == "present" and "/usr/bin/llama-server" in install.reason
    assert design.served[0].service.argv[0] == "/usr/bin/llama-server"
    assert design.pip == []


def test_embedding_models_get_mean_pooling_and_are_verified_with_embeddings(tmp_path) -> None:
    p = play(tmp_path, model("e", "{embedding: true}"))
    served = design_host(p, Host("h", {}, ["all"]), FACTS).served[0]
    argv = served.service.argv
    assert argv[argv.index("--pooling") + 1] == "mean"
    assert served.verify == "embedding"


def test_routes_file_comes_from_the_runtime(tmp_path) -> None:
    p = play(tmp_path, model("a", "{ctx_size: 1024}"))
    design = design_host(p, Host("h", {}, ["all"]), FACTS)
    ctx = type("Ctx", (), {"host": Host("h", {}, ["all"])})()
    text = render_routes(ctx, design.served)
    assert '"runtime": "llamacpp"' in text or 'runtime: "llamacpp"' in text
    assert '"max_context": 1024' in text


@pytest.mark.parametrize(
    ("args", "where", "message"),
    [
        ("{ctx_size: -4096}", "4:", 'ctx_size of model "a" must be at least 0, got -4096'),
        ("{parallel: 0}", "4:", 'parallel of model "a" must be at least 1'),
        ("{agrs: 1}", "4:", 'unknown key "agrs" in args of model "a"'),
        ("{pooling: avg}", "4:", "must be one of none, mean, cls, last, rank"),
    ],
)
def test_bad_args_are_refused_with_file_and_line(tmp_path, args, where, message) -> None:
    with pytest.raises(ConfigError) as caught:
        play(tmp_path, model("a", args))
    assert f"site.yml:{where}" in str(caught.value)
    assert message in str(caught.value)


def test_unimplemented_strategy_is_refused_at_its_line(tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        play(tmp_path, model("a"), runtimes="llamacpp: {install: nosuch}")
    assert "site.yml:2:" in str(caught.value) and "must be one of" in str(caught.value)


def test_ports_skip_taken_ones() -> None:
    ports = Ports(8081, {8081, 8082, 8084})
    assert [ports.take(), ports.take(8084), ports.take()] == [8083, 8084, 8085]
