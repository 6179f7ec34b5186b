"""`toolkit status` on a real site: the real engine (xllamacpp) serving Gemma and the proxy, under
supervisord, applied by the real CLI into a temporary data dir.

The engine is killed with SIGKILL: status must show it restarted, how it ended and its last log
lines. A stopped proxy makes status exit 1. No playbook is given to status: it reads what apply
wrote on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import GEMMA_SHA256, REPO, free_port, processes_mentioning
from tests.test_apply_e2e import GEMMA, Workspace, wait_for
from toolkit.services.definition import Service
from toolkit.services.manager import parse_states
from toolkit.services.termux import Termux
from toolkit.templates import render

ENGINE = f"engine-{GEMMA}"


def local_site(root: Path, gguf: Path, **model_args) -> Workspace:
    """The quick-start playbook on free ports, the model taken from the assembled file (no
    download), and ``model_args`` merged into the model's args."""
    ws = Workspace(root, free_port())
    plays = yaml.safe_load(ws.playbook.read_text())
    model = plays[0]["models"][0]
    model["source"] = {"path": str(gguf)}
    model["sha256"] = GEMMA_SHA256
    model["port"] = ws.engine_port = free_port()  # not proxy + 1: that one may be taken
    model["args"] = {**model["args"], **model_args}
    ws.playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    return ws


def stop_site(ws: Workspace) -> None:
    ws.toolkit("down", str(ws.playbook))
    for pid, _ in ws.processes():  # should be none; never leave a daemon behind
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def site(tmp_path_factory, gemma_gguf):
    ws = local_site(tmp_path_factory.mktemp("status"), gemma_gguf)
    first = ws.apply()
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        yield ws
    finally:
        stop_site(ws)


def status(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return ws.toolkit("status", *args, timeout=120)


def status_json(ws: Workspace) -> tuple[int, dict]:
    result = status(ws, "--json")
    (host,) = json.loads(result.stdout)
    return result.returncode, host


def test_status_of_a_healthy_site_exits_0_and_tells_everything(site):
    reply = httpx.post(
        f"http://127.0.0.1:{site.port}/v1/completions",
        json={"model": GEMMA, "prompt": "The capital of France is", "max_tokens": 4},
        timeout=120,
    )
    assert reply.status_code == 200
    result = status(site)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "localhost: healthy (supervisor;" in out
    engine = re.search(rf"^\s+{ENGINE}\s+running\s+(\d+)\s+\S+\s+0\s+(\d+) MB\s+{GEMMA}\s+"
                       rf"{site.engine_port}\s+200 \d+ ms", out, re.M)  # fmt: skip
    assert engine, out
    assert int(engine[2]) > 100  # the model is in the engine's memory
    assert re.search(rf"^\s+proxy\s+running\s+\d+ .*\s{site.port}\s+200 \d+ ms", out, re.M), out
    assert re.search(rf"proxy: {GEMMA}: [1-9]\d* requests, \d+ errors", out), out
    assert re.search(r"disk: models 2\d\d MB, [\d.]+ [MG]B free", out), out

    code, host = status_json(site)
    assert code == 0 and host["healthy"] and host["manager"] == "supervisor"
    by_name = {s["name"]: s for s in host["services"]}
    assert by_name[ENGINE]["models"] == [GEMMA] and by_name[ENGINE]["port"] == site.engine_port
    assert by_name[ENGINE]["pid"] == site.supervisor_pids()[ENGINE]
    assert host["traffic"][GEMMA]["requests"] >= 1
    assert host["models_bytes"] > 200_000_000 and host["free_bytes"] > 0


def test_engine_killed_shows_restarted_with_its_exit_and_log_tail(site):
    old_pid = site.supervisor_pids()[ENGINE]
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: site.supervisor_pids().get(ENGINE, old_pid) != old_pid, "a new engine pid")
    code, host = status_json(site)
    engine = {s["name"]: s for s in host["services"]}[ENGINE]
    assert engine["restarts"] == 1, engine
    assert engine["last_exit"] == "signal SIGKILL", engine
    written = (site.data / "logs" / f"{ENGINE}.log").read_text(errors="replace").splitlines()
    assert engine["log_tail"] and all(line in written for line in engine["log_tail"]), engine
    text = status(site).stdout
    assert f"{ENGINE}: restarted 1x, last ended: signal SIGKILL; last " in text, text
    assert f" lines of {site.data}/logs/{ENGINE}.log:\n    | " in text, text

    def healthy_again() -> bool:
        return status_json(site)[0] == 0

    wait_for(healthy_again, "status to say healthy again", attempts=60)


def test_a_stopped_service_makes_status_exit_1(site):
    ctl = [str(site.data / "venv/bin/supervisorctl"), "-c",
           str(site.data / "supervisor/supervisord.conf")]  # fmt: skip
    subprocess.run([*ctl, "stop", "proxy"], capture_output=True, timeout=60)
    try:
        result = status(site)
        assert result.returncode == 1, result.stdout
        assert "localhost: NOT HEALTHY" in result.stdout
        assert re.search(r"^\s+proxy\s+stopped\s", result.stdout, re.M), result.stdout
    finally:
        subprocess.run([*ctl, "start", "proxy"], capture_output=True, timeout=60)


def test_watch_redraws_until_interrupted(site):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolkit.cli",
            "status",
            "--watch",
            "--every",
            "0.5",
            "-i",
            str(site.inventory),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300  # each redraw is a probe: slow on a loaded machine
        while time.monotonic() < deadline and sum("localhost: healthy" in x for x in seen) < 2:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=30)
    out = "".join(seen)
    assert proc.returncode == 0, proc.stderr.read()
    assert out.count("\x1b[H\x1b[2J") >= 2, out  # drawn again in place
    assert out.count("localhost: healthy") >= 2, out


def test_no_manifest_is_a_clear_error(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "toolkit_data_dir": str(tmp_path / "empty")}}}}))  # fmt: skip
    ws = Workspace(tmp_path, free_port())
    ws.inventory = inventory
    result = ws.toolkit("status")
    assert result.returncode == 1
    assert "no services manifest in " in result.stdout and "apply a playbook first" in result.stdout


# -- termux-services' runit, for real ---------------------------------------------------------


def runit_tree(root: Path) -> tuple[Path, Termux, list[Service]]:
    """Termux run scripts as toolkit renders them for a service that runs and one that fails at
    once, linked into $PREFIX/var/service."""
    data, prefix = root / "data", root / "prefix"
    services = [
        Service("engine-ok", "runs", ["sleep", "1000"], str(root)),
        Service(
            "engine-crash",
            "fails at once",
            ["sh", "-c", "echo 'error: no such flag'; exit 3"],
            str(root),
        ),  # fmt: skip
    ]
    # A $PREFIX whose bin/ holds this machine's sh and Debian's real runit, as Termux's has.
    (prefix / "bin").mkdir(parents=True)
    for program in ("sh", "sv", "svlogd", "runsv", "runsvdir"):
        (prefix / "bin" / program).symlink_to(shutil.which(program))
    manager = Termux(prefix=str(prefix))
    (prefix / "var/service").mkdir(parents=True)
    for d in manager.definitions(services, str(data), "testhost"):
        path = data / d.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(d.template, **d.variables))
        path.chmod(d.mode)
    for s in services:
        (prefix / "var/service" / s.name).symlink_to(data / "termux" / s.name)
    return prefix, manager, services


def processes_under(path: Path) -> list[int]:
    return [pid for pid, _ in processes_mentioning(path)]


def test_runit_reports_states_logs_and_a_crash_loop_fails_the_wait_at_once(tmp_path):
    assert shutil.which("runsvdir"), ".ci/run installs runit (runsvdir, sv, svlogd)"
    prefix, manager, services = runit_tree(tmp_path)
    env = {**os.environ, "PREFIX": str(prefix), "TK_DATA": str(tmp_path / "data")}
    runsvdir = subprocess.Popen(["runsvdir", str(prefix / "var/service")],
                                start_new_session=True, env=env)  # fmt: skip

    def sh(script: str) -> str:
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env,
                              timeout=60).stdout  # fmt: skip

    try:
        names = " ".join(s.name for s in services)
        wait_for(lambda: "running" in sh(manager.state_script(names)), "runsv to start engine-ok")
        wait_for(lambda: sh(manager.log_script("engine-crash", 5)).count("no such flag") >= 2,
                 "two runs of engine-crash in its svlogd log")  # fmt: skip
        states = parse_states(sh(manager.state_script(names)))
        assert states["engine-ok"].state == "running" and states["engine-ok"].pid
        assert states["engine-ok"].uptime_s is not None
        assert states["engine-ok"].restarts is None  # runit keeps no count
        crash = states["engine-crash"]
        assert crash.state == "restarting" or (crash.state == "running" and crash.uptime_s == 0)
        text, cursor = manager.read_log(sh(manager.log_script("engine-crash", 2)))
        assert len(text.splitlines()) == 2 and text.rstrip().endswith("error: no such flag")
        assert cursor and int(cursor) > 0

        # health_check.py, watching through runit, gives up on the crash loop at once
        spec = {
            "urls": ["http://127.0.0.1:9/health"],  # never answers
            "deadline_s": 120,
            "watch": {
                "script": manager.state_script(names),
                "services": {},
                "tails": {"engine-crash": manager.log_script("engine-crash", 20)},
            },
        }
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, str(REPO / "toolkit/services/health_check.py"), json.dumps(spec)],
            capture_output=True, text=True, env=env, timeout=150,
        )  # fmt: skip
        print(f"runit: the crash loop was noticed after {time.monotonic() - started:.1f} s")
        report = json.loads(out.stdout)
        assert out.returncode == 1 and set(report["failed"]) == {"engine-crash"}, report
        assert report["failed"]["engine-crash"]["log"][-1].endswith("error: no such flag")
    finally:
        for s in services:  # runsv stops its service and its log, then exits
            subprocess.run(["sv", "exit", str(prefix / "var/service" / s.name)],
                           capture_output=True, env=env, timeout=30)  # fmt: skip
        runsvdir.send_signal(signal.SIGHUP)
        with contextlib.suppress(subprocess.TimeoutExpired):
            runsvdir.wait(timeout=10)
        for pid in processes_under(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if runsvdir.poll() is None:
            runsvdir.kill()
        runsvdir.wait(timeout=10)
