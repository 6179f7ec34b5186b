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
from toolkit.services.manager import parse_states
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


SYSTEMCTL_SHOW = {  # `systemctl show -p ...` of a unit, as systemd 252 prints it
    "running": "ActiveState=active\nSubState=running\nExecMainStatus=0\nExecMainCode=0\n"
    "NRestarts=2\nExecMainStartTimestampMonotonic=1000000\nMainPID=4242\n",
    "killed": "ActiveState=activating\nSubState=auto-restart\nExecMainStatus=9\nExecMainCode=2\n"
    "NRestarts=3\nExecMainStartTimestampMonotonic=0\nMainPID=0\n",
    "failed": "ActiveState=failed\nSubState=failed\nExecMainStatus=2\nExecMainCode=1\n"
    "NRestarts=5\nExecMainStartTimestampMonotonic=0\nMainPID=0\n",
}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("running", ("running", 4242, 100, 2, "")),
        ("killed", ("restarting", None, None, 3, "signal 9")),
        ("failed", ("crashed", None, None, 5, "exit 2")),
    ],
)
def test_systemd_state_script_reads_systemctl_show(tmp_path, case, expected):
    """The state script run with a `systemctl` that prints what systemd prints for a unit."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(f"#!/bin/sh\ncat <<'EOF'\n{SYSTEMCTL_SHOW[case]}EOF\n")
    (fake / "systemctl").chmod(0o755)
    (fake / "cut").write_text("#!/bin/sh\necho 101.5\n")  # /proc/uptime: 101.5 s since boot
    (fake / "cut").chmod(0o755)
    script = Systemd(system=True).state_script("engine-x")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{fake}:/usr/bin:/bin"}).stdout  # fmt: skip
    state = parse_states(out)["engine-x"]
    assert (state.state, state.pid, state.uptime_s, state.restarts, state.last_exit) == expected


def test_every_manager_writes_the_services_manifest(tmp_path):
    from toolkit.services import manifest

    service = sample_service(tmp_path)
    service.health_url = "http://127.0.0.1:8081/health"
    for manager in (Supervisor(), Systemd(system=False), Termux()):
        files = rendered(manager, service, tmp_path)
        listed = manifest.parse(files[manifest.RELPATH], "test")
        assert listed.kind == manager.kind
        assert type(listed.manager) is type(manager)
        (entry,) = listed.services
        assert entry.name == service.name and entry.health_url == service.health_url
        assert entry.log == manager.log_location(service, str(tmp_path))
