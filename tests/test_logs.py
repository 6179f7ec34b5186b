"""`toolkit logs HOST [SERVICE] [-n N] [-f]`, on this machine and over SSH.

Locally: the real engine (xllamacpp serving Gemma) and the proxy under supervisord. Over SSH: a
loopback sshd host of tests/sshbed.py, converged by the real CLI, with the llama-server stand-in
(tests/llama_standin.py) as its engine, as in tests/test_fleet.py: a second real engine is too
heavy for this machine. The stand-in writes one line each time it starts, so killing it a few
times gives its log more lines than asked for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from tests.test_apply_e2e import GEMMA, wait_for
from tests.test_fleet import Fleet, stop_and_scan, yaml_inventory
from tests.test_status import ENGINE, local_site, stop_site


@pytest.fixture(scope="module")
def site(tmp_path_factory, gemma_gguf):
    ws = local_site(tmp_path_factory.mktemp("logs"), gemma_gguf)
    first = ws.apply()
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        yield ws
    finally:
        stop_site(ws)


def last_lines(path, n: int) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-n:]


def test_logs_n_5_prints_the_engines_last_lines_on_this_machine(site):
    log = site.data / "logs" / f"{ENGINE}.log"
    result = site.toolkit("logs", "localhost", ENGINE, "-n", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == last_lines(log, 5)
    assert any("listening on" in line for line in log.read_text().splitlines())
    by_model = site.toolkit("logs", "localhost", GEMMA, "-n", "5")  # a model finds its engine
    assert by_model.stdout == result.stdout


def test_logs_of_every_service_have_a_header_each(site):
    result = site.toolkit("logs", "localhost", "-n", "2")
    assert result.returncode == 0, result.stderr
    assert f"==> {ENGINE} ({site.data}/logs/{ENGINE}.log) <==" in result.stdout
    assert f"==> proxy ({site.data}/logs/proxy.log) <==" in result.stdout


def test_an_unknown_service_is_refused_with_a_suggestion(site):
    result = site.toolkit("logs", "localhost", "prxy")
    assert result.returncode == 1
    assert 'no service "prxy" (services: ' in result.stderr
    assert 'did you mean "proxy"?' in result.stderr


def test_logs_follow_prints_new_lines_until_interrupted(site):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolkit.cli",
            "logs",
            "localhost",
            "proxy",
            "-n",
            "0",
            "-f",
            "-i",
            str(site.inventory),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env,
    )
    try:
        time.sleep(3)  # it has read where the log ends
        for _ in range(3):  # each request is one access-log line of the proxy
            httpx.post(f"http://127.0.0.1:{site.port}/v1/completions", timeout=30,
                       json={"model": "no-such-model", "prompt": "x"})  # fmt: skip
        time.sleep(4)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    followed = [line for line in out.splitlines() if '"model":"no-such-model"' in line]
    assert len(followed) == 3, out


# -- over SSH ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssh_site(ssh_hosts, tmp_path_factory):
    host = ssh_hosts[-1]
    host.clean_home()
    ws = Fleet(tmp_path_factory.mktemp("ssh-logs"), [host])
    ws.down.close()
    inventory = ws.root / "one.yml"
    inventory.write_text(yaml_inventory({host.name: ws.entries[host.name]}))
    ws.one = inventory
    first = ws.apply(inventory=inventory)
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        yield ws
    finally:
        left = stop_and_scan(ws, inventory, ws.playbook, {host.user}, [])
        host.clean_home()
        assert left == [], f"daemons left behind: {left}"


def standin_pid(data) -> int | None:
    out = subprocess.run(
        [str(data / "venv/bin/supervisorctl"), "-c", str(data / "supervisor/supervisord.conf"),
         "status", "engine-tiny"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    words = out.replace(",", " ").split()
    return int(words[words.index("pid") + 1]) if "RUNNING" in words else None


def test_logs_n_5_prints_the_engines_last_lines_over_ssh(ssh_site):
    host = ssh_site.hosts[0]
    data = host.home / ".local/share/toolkit"
    # supervisord says RUNNING a second (startsecs) after the start, health may come sooner
    wait_for(lambda: standin_pid(data) is not None, "the stand-in RUNNING")
    for _ in range(6):  # six restarts: seven start lines, more than asked for
        pid = standin_pid(data)
        assert pid, "the stand-in should be running"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda p=pid: standin_pid(data) not in (None, p), "a new stand-in pid")
    log = data / "logs/engine-tiny.log"
    result = ssh_site.toolkit("logs", host.name, "engine-tiny", "-n", "5", inventory=ssh_site.one)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == last_lines(log, 5) and len(lines) == 5
    assert all(line.startswith("stand-in llama-server for tiny on http://") for line in lines)

    status = ssh_site.toolkit("status", "--json", inventory=ssh_site.one)
    (report,) = yaml.safe_load(status.stdout)  # JSON is YAML
    engine = {s["name"]: s for s in report["services"]}["engine-tiny"]
    assert engine["restarts"] == 6 and engine["last_exit"] == "signal SIGKILL", engine
    assert engine["log_tail"][-1].startswith("stand-in llama-server for tiny")
