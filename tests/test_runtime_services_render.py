"""The services Ollama and LlamaEdge run, rendered for each service manager, are valid for the
real tools that read them: ``systemd-analyze verify`` for units, ``sh -n`` for termux-services
run scripts, supervisor's own parser for its programs."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import GEMMA_SHA256
from toolkit.desired import design_host
from toolkit.hosts.facts import Facts
from toolkit.inventory import Host
from toolkit.resources.base import Change
from toolkit.services.supervisor import Supervisor
from toolkit.services.systemd import Systemd, unit_name
from toolkit.services.termux import Termux
from toolkit.site import load_playbook
from toolkit.templates import render


def design(tmp_path: Path, **facts_given):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    playbook = tmp_path / "site.yml"
    playbook.write_text(
        f"""- hosts: all
  runtimes:
    ollama: {{install: release, mirror: "http://127.0.0.1:9/"}}
    wasmedge: {{install: release, mirror: "http://127.0.0.1:9/"}}
  models:
    - {{name: pulled, runtime: ollama, source: {{ollama: "gemma3:270m"}}}}
    - {{name: imported, runtime: ollama, source: {{path: "{gguf}"}}, sha256: {GEMMA_SHA256},
        args: {{system: "it's \\"quoted\\" and 100%"}}}}
    - {{name: wasm, runtime: wasmedge, source: {{path: "{gguf}"}}, sha256: {GEMMA_SHA256},
        args: {{prompt_template: gemma-3, ctx_size: 2048}}}}
  proxy: {{port: 9400}}
"""
    )
    play = load_playbook(playbook)[0]
    data = tmp_path / "data"
    facts = Facts(os="Linux", arch="x86_64", data_dir=str(data), python3="/usr/bin/python3",
                  **facts_given)  # fmt: skip
    result = design_host(play, Host("h", {}, ["all"]), facts)
    for service in result.services:  # systemd-analyze wants the programs to exist
        program = Path(service.argv[0])
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    return result


def test_one_ollama_daemon_for_its_models_and_one_llamaedge_service_per_model(tmp_path):
    result = design(tmp_path)
    names = [s.name for s in result.services]
    assert names == ["ollama", "engine-wasm", "proxy"]
    ollama = result.services[0]
    port = result.served[0].port
    assert ollama.env["OLLAMA_HOST"] == f"127.0.0.1:{port}"
    assert ollama.env["OLLAMA_MODELS"] == f"{tmp_path}/data/ollama/models"
    assert ollama.health_url == f"http://127.0.0.1:{port}/api/version"
    assert [s.backend.get("model") for s in result.served] == [
        "gemma3:270m", "imported:latest", None,
    ]  # fmt: skip
    wasm = result.services[1]
    argv = wasm.argv
    assert argv[argv.index("--socket-addr") + 1].startswith("127.0.0.1:")
    assert "--port" not in argv
    assert wasm.health_url.endswith("/v1/models")
    ids = [r.id for r in result.resources]
    assert ids.index("services") < ids.index("ollama-model:gemma3:270m")
    assert ids.index("archive:runtimes/wasmedge-0.14.1") < ids.index(
        "archive:runtimes/wasmedge-0.14.1/plugin"
    )


@pytest.mark.parametrize("system", [True, False])
def test_units_pass_systemd_analyze_verify(tmp_path, system):
    result = design(tmp_path, uid=0 if system else 1000, systemd_system=system)
    assert shutil.which("systemd-analyze"), ".ci/run installs systemd for systemd-analyze"
    manager = Systemd(system=system)
    for definition in manager.definitions(result.services[:2], str(tmp_path), "h"):
        if not definition.relpath.endswith(".service"):
            continue  # services.json: what status and logs read, not a unit
        unit = tmp_path / Path(definition.relpath).name
        unit.write_text(render(definition.template, **definition.variables))
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
        )
        problems = [line for line in (verify.stdout + verify.stderr).splitlines()
                    if unit.name in line]  # fmt: skip
        assert verify.returncode == 0 and not problems, verify.stdout + verify.stderr
        assert "Restart=always" in unit.read_text()
    assert unit_name(result.services[0]) == "toolkit-ollama.service"
    ollama_unit = (tmp_path / "toolkit-ollama.service").read_text()
    assert ("User=ollama" in ollama_unit) == system  # as Ollama's installer, when root
    assert ("user:ollama" in [r.id for r in result.resources]) == system


def test_termux_run_scripts_are_valid_sh(tmp_path):
    result = design(tmp_path)
    for definition in Termux().definitions(result.services[:2], str(tmp_path), "h"):
        if not definition.relpath.endswith("run"):
            continue  # services.json
        script = tmp_path / "run"
        script.write_text(render(definition.template, **definition.variables).split("\n", 1)[1])
        assert subprocess.run(["sh", "-n", str(script)]).returncode == 0, script.read_text()


def test_supervisor_programs_parse_and_keep_the_command_line(tmp_path):
    from supervisor.options import ServerOptions

    result = design(tmp_path)
    data = tmp_path / "data"
    for definition in Supervisor().definitions(result.services[:2], str(data), "h"):
        path = data / definition.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(definition.template, **definition.variables))
    for made_by_converge in ("logs", "run"):
        (data / made_by_converge).mkdir(exist_ok=True)
    options = ServerOptions()
    options.realize(["-c", str(data / "supervisor/supervisord.conf")])
    programs = {p.name: p for g in options.process_group_configs for p in g.process_configs}
    for service in result.services[:2]:
        assert shlex.split(programs[service.name].command) == service.argv
        assert programs[service.name].environment == service.env


def test_daemon_user_is_created_owns_its_folders_and_must_reach_the_binary(tmp_path):
    """Real useradd/chown/runuser on this machine (as root), with a user of the tests' own."""
    import os
    import tempfile

    from toolkit.errors import ToolkitError
    from toolkit.hosts.connection import CommandFailed, LocalConnection
    from toolkit.resources.base import HostContext, RunOptions
    from toolkit.runtimes.ollama import DaemonUser

    if os.geteuid() != 0:
        pytest.fail("this test creates a system user: run the suite as root (as .ci/run does)")
    ctx = HostContext(Host("h", {}, ["all"]), None, LocalConnection(), Facts(), str(tmp_path),
                      {}, RunOptions())  # fmt: skip
    with tempfile.TemporaryDirectory(dir="/var/tmp") as open_dir:
        os.chmod(open_dir, 0o755)
        binary = Path(open_dir) / "bin/ollama"
        binary.parent.mkdir()
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
        folders = [f"{open_dir}/models", f"{open_dir}/home"]
        user = DaemonUser("tkollama", folders, str(binary))
        probe = lambda: ctx.sh(user.probe(RunOptions()), "probe").stdout  # noqa: E731
        change = user.plan(probe(), ctx, set())
        assert change is not None
        user.apply(change, ctx)
        assert user.plan(probe(), ctx, set()) is None  # the user exists and owns both folders
        assert all(Path(f).owner() == "tkollama" for f in folders)
        closed = DaemonUser("tkollama", folders, str(tmp_path / "ollama"))  # under a 0700 folder
        (tmp_path / "ollama").write_text("#!/bin/sh\n")
        (tmp_path / "ollama").chmod(0o755)
        with pytest.raises((ToolkitError, CommandFailed)) as caught:
            closed.apply(Change(closed, "x"), ctx)
        assert "cannot run" in str(caught.value) and "toolkit_data_dir" in str(caught.value)
