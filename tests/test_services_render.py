"""Rendered service definitions are valid for the real tools that read them.

systemd units go through `systemd-analyze verify`; supervisord programs through supervisor's own
config parser; termux-services run scripts through `sh -n` and are run for real under sh.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.services.definition import Service
from toolkit.services.supervisor import Supervisor
from toolkit.services.systemd import Systemd, unit_name
from toolkit.services.termux import Termux
from toolkit.templates import render

WEIRD = 'it\'s a "quoted" value with $HOME and 100% and spaces'
ENV_VALUE = "it's $HOME, 100% and spaces, a=b"  # supervisord cannot hold both quote kinds


def sample_service(tmp_path: Path) -> Service:
    return Service(
        name="engine-gemma-3-270m",
        description="llama.cpp serving gemma-3-270m",
        argv=[sys.executable, "-c", "import sys; print(sys.argv[-1])", "--alias", WEIRD],
        workdir=str(tmp_path),
        env={"PYTHONUNBUFFERED": "1", "TOOLKIT_NOTE": ENV_VALUE},
    )


def rendered(manager, service: Service, data_dir: Path) -> dict[str, str]:
    return {
        d.relpath: render(d.template, **d.variables)
        for d in manager.definitions([service], str(data_dir), "testhost")
    }


@pytest.mark.parametrize("system", [True, False])
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path, system):
    service = sample_service(tmp_path)
    files = rendered(Systemd(system=system, user="root" if system else None), service, tmp_path)
    unit = tmp_path / unit_name(service)
    unit.write_text(files[f"systemd/{unit_name(service)}"])
    assert shutil.which("systemd-analyze"), ".ci/run installs systemd for systemd-analyze"
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if unit.name in line  # ignore complaints about the host's own units
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
    text = unit.read_text()
    assert "Restart=always" in text and "KillMode=control-group" in text
    assert ("WantedBy=multi-user.target" in text) == system


def test_supervisor_program_parses_with_supervisors_own_parser(tmp_path):
    from supervisor.options import ServerOptions

    service = sample_service(tmp_path)
    files = rendered(Supervisor(), service, tmp_path)
    for relpath, text in files.items():
        path = tmp_path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for made_by_converge in ("logs", "run"):
        (tmp_path / made_by_converge).mkdir()
    options = ServerOptions()
    options.realize(["-c", str(tmp_path / "supervisor/supervisord.conf")])
    (group,) = options.process_group_configs
    (program,) = group.process_configs
    assert program.name == service.name
    import shlex

    assert shlex.split(program.command) == service.argv  # quoting and % survive the trip
    assert program.environment["TOOLKIT_NOTE"] == ENV_VALUE
    assert program.stopasgroup and program.killasgroup
    assert program.autorestart


def test_termux_run_script_is_valid_sh_and_runs_the_command(tmp_path):
    service = sample_service(tmp_path)
    files = rendered(Termux(), service, tmp_path)
    run = files[f"termux/{service.name}/run"]
    script = tmp_path / "run"
    # The shebang is Termux's sh; run it with this machine's sh.
    script.write_text(run.split("\n", 1)[1])
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert WEIRD in out.stdout
    assert (
        files[f"termux/{service.name}/log/run"].strip().endswith(f"{tmp_path}/logs/{service.name}")
    )
