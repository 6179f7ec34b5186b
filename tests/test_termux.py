"""Termux end to end, without root, on a STAND-IN for an Android phone (tests/termux_bed.py).

Real: toolkit's CLI over real SSH to a non-root user, Debian's runit as termux-services'
supervisor, dpkg's database, the real llama.cpp engine serving the real Gemma model, the real
proxy. Standing in for Android: the $PREFIX tree and PATH, `pkg` and its packages (installed
from a local directory the test built), termux-wake-lock. Nothing here ran on a real phone.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.termux_bed import PackageRepo, TermuxBed, engine_dir, termux_packages
from tests.toolkit_site import GEMMA, ToolkitSite, recap
from toolkit.site import load_site

ENGINE = "engine-gemma-3-270m"


def wait_for(predicate, what: str, deadline_s: float = 180):
    delay, end = 0.1, time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")


def complete(port: int) -> str:
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        json={"model": GEMMA, "prompt": "The capital of France is", "max_tokens": 8,
              "temperature": 0},
        timeout=120,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]


def site_for(bed: TermuxBed, root: Path, model: Path) -> ToolkitSite:
    """playbooks/edge.yml for the bed's phone: the model from a local file, a free proxy port."""
    host = bed.host
    site = ToolkitSite(
        root,
        host.name,
        {
            **host.inventory_vars(),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={host.known_hosts}",
            "termux_wake_lock": True,
        },
        {"install": "auto"},
        model,
        free_port(),
    )
    (play,) = yaml.safe_load((REPO / "playbooks/edge.yml").read_text())
    play["hosts"] = "all"
    play["models"][0]["source"] = {"path": str(model)}
    play["proxy"]["port"] = site.proxy_port
    site.playbook.write_text(yaml.safe_dump([play], sort_keys=False))
    return site


def test_edge_playbook_and_example_inventory_provision_phones():
    site = load_site(REPO / "playbooks/edge.yml", REPO / "inventory/example.yml")
    ((play, hosts),) = site.targets()
    assert [h.name for h in hosts] == ["pixel7"]
    (phone,) = hosts
    assert phone.port == 8022 and phone.vars["termux_wake_lock"] is True
    assert play.runtimes["llamacpp"].install == "auto" and play.proxy.host == "127.0.0.1"


def engine_pids(bed: TermuxBed) -> list[int]:
    return [pid for pid, cmd in bed.processes().items() if "xllamacpp_server.py" in cmd]


@pytest.fixture(scope="module")
def packages():
    """The stand-in packages, where the bed's user can read them."""
    base = Path(tempfile.mkdtemp(prefix="toolkit-termux-packages-"))
    base.chmod(0o755)
    try:
        repo = PackageRepo(base / "repo")
        termux_packages(repo, engine_dir(base / "engine"))
        yield repo
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_phone_without_network_fails_with_pkgs_error_and_sets_nothing_up(
    packages, gemma_gguf, tmp_path
):
    with TermuxBed(repo=None) as bed:  # pkg has no mirror to reach
        site = site_for(bed, tmp_path / "site", gemma_gguf)
        result = site.apply()
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert recap(out, bed.host.name)[2] == 1
        assert "pkg install python termux-services llama-cpp failed (exit 100)" in out
        assert "E: Unable to locate package termux-services" in out  # pkg's own words
        assert not list((bed.prefix / "var/service").iterdir())  # no dangling service links
        assert not (bed.prefix / "bin/runsvdir").exists()
        data = bed.host.home / ".local/share/toolkit"
        assert not (data / "venv").exists() and not (data / "termux").exists()
        assert bed.processes() == {}


@pytest.fixture(scope="module")
def phone(packages, gemma_gguf, tmp_path_factory):
    with TermuxBed(packages) as bed:
        site = site_for(bed, tmp_path_factory.mktemp("termux-site"), gemma_gguf)
        first = site.apply()
        try:
            yield bed, site, first
        finally:
            site.down()


def test_apply_installs_with_pkg_and_a_real_completion_comes_through_the_proxy(phone):
    bed, site, first = phone
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    assert "services: termux; llama.cpp: package (Termux: pkg llama-cpp)" in out
    # one pkg install for everything missing
    assert (
        "packages:pkg:python,termux-services,llama-cpp: pkg install python termux-services llama-cpp"
        in out
    )
    status = (bed.prefix / "var/lib/dpkg/status").read_text()
    for name in ("python", "termux-services", "llama-cpp"):
        assert f"Package: {name}\nStatus: install ok installed" in status
    assert complete(site.proxy_port).strip()
    # the service dirs are linked into $PREFIX/var/service, with svlogd logging
    link = bed.prefix / "var/service" / f"toolkit-{ENGINE}"
    assert link.is_symlink() and (link / "run").exists() and (link / "log/run").exists()
    run = (link / "run").read_text()
    assert run.startswith(f"#!{bed.prefix}/bin/sh\n")
    assert f"{bed.prefix}/bin/llama-server -m " in run
    assert " -c 2048 " in run and f" -t {os.cpu_count()} " in run  # the phone's defaults
    assert "svlogd -tt" in (link / "log/run").read_text()
    routes = (bed.host.home / ".local/share/toolkit/proxy/routes.yml").read_text()
    assert '"max_context": 2048' in routes  # the proxy knows the phone's context
    # runsvdir was started detached, in a session of its own: it outlives the SSH connection
    (runsvdir,) = [p for p, cmd in bed.processes().items() if "runsvdir" in cmd]
    stat = Path(f"/proc/{runsvdir}/stat").read_text().rsplit(")", 1)[1].split()
    session, tty = int(stat[3]), int(stat[4])
    sshd = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_sshd(p)]
    assert session not in sshd and tty == 0  # not in the SSH session, no terminal
    assert (bed.prefix / "tmp/wake-lock").exists()  # termux_wake_lock: true


def _is_sshd(proc: Path) -> bool:
    try:
        return (proc / "comm").read_text().strip() == "sshd"
    except OSError:
        return False


def test_second_apply_changes_nothing(phone):
    bed, site, _ = phone
    before = engine_pids(bed)
    again = site.apply()
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again.stdout, bed.host.name)[1] == 0, again.stdout
    assert engine_pids(bed) == before


def test_runit_restarts_a_killed_engine_and_the_next_request_is_answered(phone):
    bed, site, _ = phone
    (old,) = engine_pids(bed)
    os.kill(old, signal.SIGKILL)  # as Android's phantom-process killer would
    new = wait_for(lambda: [p for p in engine_pids(bed) if p != old], "runsv to restart it")
    assert new
    text = wait_for(lambda: _answer(site.proxy_port), "the restarted engine to answer", 300)
    assert text.strip()


def _answer(port: int) -> str | None:
    try:
        return complete(port)
    except (AssertionError, httpx.HTTPError):
        return None


def test_down_leaves_nothing_running_and_keeps_packages_and_models(phone):
    bed, site, _ = phone
    result = site.down()
    assert result.returncode == 0, result.stdout + result.stderr

    def only_runsvdir_left():
        left = bed.processes()
        return all("runsvdir" in cmd for cmd in left.values()) and left

    # runsvdir is termux-services' own daemon (it may run sshd on a phone): it stays, alone
    wait_for(only_runsvdir_left, "the engine, proxy, runsv and svlogd to exit", 60)
    assert not list((bed.prefix / "var/service").iterdir())
    assert not (bed.prefix / "tmp/wake-lock").exists()
    status = (bed.prefix / "var/lib/dpkg/status").read_text()
    assert "Package: llama-cpp\nStatus: install ok installed" in status
    models = bed.host.home / ".local/share/toolkit/models"
    assert [p for p in models.iterdir() if p.suffix == ".gguf"]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{site.proxy_port}/health", timeout=5)


def test_apply_after_down_starts_the_services_again(phone):
    """The services' supervise/ dirs from the first run are still in the data dir: starting
    again must wait for the new runsv, not trust the old ok pipe."""
    bed, site, _ = phone
    again = site.apply()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "services: start engine-gemma-3-270m, proxy" in again.stdout
    assert complete(site.proxy_port).strip()
