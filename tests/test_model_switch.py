"""Switching a model to a changed engine without dropping its requests (toolkit/switch.py).

The decision and the design are pure and tested as such; then, all real: the quick-start site on
this machine under supervisord with the xllamacpp engine and the Gemma model, its args changed
and applied again while two threads send completions through the proxy. Side by side: not one
request fails. With ``max_memory_gb`` leaving room for one engine only: drain, then swap, and the
recap says how long the model was unavailable. A third apply changes nothing, and ``down``
leaves no process behind.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import GEMMA_SHA256
from tests.test_apply_e2e import GEMMA, applied_site, recap_counts
from toolkit.desired import ROUTES_RELPATH, design_host
from toolkit.hosts.facts import Facts
from toolkit.inventory import Host
from toolkit.preflight import GIB, ModelNeed, fits_twice, kv_cache_bytes
from toolkit.resources.service import Services
from toolkit.services.drain_check import gauge_sum, routed_backends
from toolkit.site import load_playbook
from toolkit.switch import (
    DRAIN_THEN_SWAP,
    SIDE_BY_SIDE,
    EnginesReady,
    OldEnginesRetired,
    live_slot,
    switch_mode,
)

ENGINE = f"engine-{GEMMA}"
ALTERNATE = f"{ENGINE}-alt"

# -- the decision ---------------------------------------------------------------------------------


def need(name: str, gib: float, on_gpu: bool = False) -> ModelNeed:
    return ModelNeed(name, int(gib * GIB), 0, on_gpu)


def test_both_engines_fit_side_by_side() -> None:
    needs = [need("a", 1.0), need("b", 2.0)]
    assert fits_twice(needs, {"a"}, {"RAM": int(4 * GIB), "GPU memory": 0})
    assert switch_mode(True) == SIDE_BY_SIDE


def test_not_twice_in_ram_drains_then_swaps() -> None:
    needs = [need("a", 1.0), need("b", 2.0)]
    budget = {"RAM": int(4.5 * GIB), "GPU memory": 0}
    assert fits_twice(needs, {"a"}, budget)  # 1 + 1 + 2
    assert not fits_twice(needs, {"b"}, budget)  # 2 + 2 + 1
    assert switch_mode(False) == DRAIN_THEN_SWAP


def test_gpu_models_count_against_gpu_memory() -> None:
    needs = [need("a", 3.0, on_gpu=True), need("b", 3.0)]
    assert not fits_twice(needs, {"a"}, {"RAM": int(100 * GIB), "GPU memory": int(5 * GIB)})
    assert fits_twice(needs, {"b"}, {"RAM": int(7 * GIB), "GPU memory": int(5 * GIB)})


def test_a_model_whose_need_is_unknown_is_not_assumed_to_fit() -> None:
    assert not fits_twice([need("a", 1.0)], {"c"}, {"RAM": int(100 * GIB), "GPU memory": 0})


def test_the_live_slot_is_what_the_last_apply_left() -> None:
    assert live_slot(ENGINE, []) == 0
    assert live_slot(ENGINE, [ENGINE, "proxy"]) == 0
    assert live_slot(ENGINE, [ALTERNATE, "proxy"]) == 1
    assert live_slot(ENGINE, [ENGINE, ALTERNATE]) == 0  # both: a switch cut short


# -- the design -----------------------------------------------------------------------------------


def play_of(tmp_path: Path):
    (tmp_path / "site.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "switch",
                    "hosts": "all",
                    "runtimes": {"llamacpp": {"install": "pip"}},
                    "models": [
                        {
                            "name": GEMMA,
                            "runtime": "llamacpp",
                            "source": {"url": "http://x/gemma.gguf"},
                            "sha256": GEMMA_SHA256,
                            "args": {"ctx_size": 2048},
                        }
                    ],
                    "proxy": {"port": 9000},
                }
            ]
        )
    )
    return load_playbook(tmp_path / "site.yml")[0]


FACTS = dict(data_dir="/srv/tk", os="Linux", arch="x86_64", python3="/usr/bin/python3", uid=1000)


def test_each_model_has_two_stable_slots_and_serves_from_the_live_one(tmp_path) -> None:
    play, host = play_of(tmp_path), Host("h", {}, [])
    first = design_host(play, host, Facts(**FACTS))
    assert [s.name for s in first.services] == [ENGINE, "proxy"]
    assert first.served[0].backend["url"] == "http://127.0.0.1:9001"
    assert [s.name for s in first.spares] == [ALTERNATE]
    after = design_host(play, host, Facts(**FACTS, services=[ALTERNATE, "proxy"]))
    assert [s.name for s in after.services] == [ALTERNATE, "proxy"]
    assert after.served[0].backend["url"] == "http://127.0.0.1:9002"
    assert "--port" in after.services[0].argv and "9002" in after.services[0].argv
    assert [s.name for s in after.spares] == [ENGINE] and after.switch is None


def test_side_by_side_routes_after_the_new_engine_answers(tmp_path) -> None:
    design = design_host(
        play_of(tmp_path), Host("h", {}, []), Facts(**FACTS), {GEMMA}, SIDE_BY_SIDE
    )
    assert design.switch and [s.name for s in design.switch.new] == [ALTERNATE]
    assert [s.name for s in design.switch.old] == [ENGINE]
    steps = [r for r in design.resources if isinstance(r, (Services, EnginesReady,
             OldEnginesRetired)) or getattr(r, "relpath", "") == ROUTES_RELPATH]  # fmt: skip
    kinds = [type(r).__name__ for r in steps]
    assert kinds == ["Services", "EnginesReady", "File", "OldEnginesRetired"]
    assert design.resources[-1].id == "file:services.json"


def test_drain_then_swap_routes_away_first(tmp_path) -> None:
    design = design_host(
        play_of(tmp_path), Host("h", {}, []), Facts(**FACTS), {GEMMA}, DRAIN_THEN_SWAP
    )
    steps = [r for r in design.resources if isinstance(r, (Services, EnginesReady,
             OldEnginesRetired)) or getattr(r, "relpath", "") == ROUTES_RELPATH]  # fmt: skip
    kinds = [type(r).__name__ for r in steps]
    assert kinds == ["File", "OldEnginesRetired", "Services", "EnginesReady"]


def test_drain_check_reads_the_proxy_and_engine_metrics() -> None:
    proxy = (
        "# TYPE toolkit_proxy_in_flight_requests gauge\n"
        'toolkit_proxy_in_flight_requests{backend="http://127.0.0.1:9002"} 0.0\n'
        'toolkit_proxy_backend_healthy{backend="http://127.0.0.1:9001"} 1.0\n'
    )
    assert routed_backends(proxy) == {"http://127.0.0.1:9002"}
    engine = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\nother 5\n"
    gauges = ["llamacpp:requests_processing", "llamacpp:requests_deferred"]
    assert gauge_sum(engine, gauges) == 3


# -- all real -------------------------------------------------------------------------------------


class Traffic:
    """Completions through the proxy from two threads until stopped (at most ``limit`` each),
    counting what failed."""

    def __init__(self, port: int, limit: int = 2000):
        self.url = f"http://127.0.0.1:{port}/v1/completions"
        self.limit = limit
        self.stop = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(2)]

    def loop(self) -> None:
        body = {"model": GEMMA, "prompt": "The capital of France is", "max_tokens": 4}
        with httpx.Client(timeout=120) as client:
            for _ in range(self.limit):
                if self.stop.is_set():
                    return
                try:
                    answer = client.post(self.url, json=body)
                    failed = "" if answer.status_code == 200 else f"{answer.status_code}"
                except httpx.HTTPError as exc:
                    failed = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    self.sent += 1
                    if failed:
                        self.failures.append(failed)
                if failed:
                    time.sleep(0.05)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=150)


def set_play(ws, args: dict, **play_keys) -> None:
    plays = yaml.safe_load(ws.playbook.read_text())
    plays[0]["models"][0]["args"] = args
    plays[0].update(play_keys)
    ws.playbook.write_text(yaml.safe_dump(plays, sort_keys=False))


def test_a_changed_model_switches_without_dropping_requests(tmp_path) -> None:
    args = {"ctx_size": 2048, "parallel": 1, "chat_template": "gemma"}
    with applied_site(tmp_path, args) as ws:
        assert ws.first.returncode == 0, ws.first.stdout + ws.first.stderr
        assert ENGINE in ws.supervisor_pids()

        # 1. room for both: the new engine beside the old one, not one request fails
        set_play(ws, {**args, "parallel": 2})
        with Traffic(ws.port) as traffic:
            time.sleep(2)  # requests in flight when the switch starts
            switched = ws.apply()
            time.sleep(1)
        out = switched.stdout + switched.stderr
        assert switched.returncode == 0, out
        assert f"{GEMMA}: switched without a gap ({ENGINE} -> {ALTERNATE}" in out
        print(f"side by side: {traffic.sent} requests, {len(traffic.failures)} failed;",
              *[line.strip() for line in out.splitlines() if "switched " in line][-1:])  # fmt: skip
        assert traffic.sent > 0
        assert traffic.failures == [], (traffic.failures[:5], out)
        pids = ws.supervisor_pids()
        assert ALTERNATE in pids and ENGINE not in pids, pids
        assert not (ws.data / f"supervisor/programs/{ENGINE}.conf").exists()

        # 2. room for one engine only (a gguf of ~0.27 GiB with its cache): drain, then swap
        set_play(ws, {**args, "parallel": 1}, max_memory_gb=0.45)
        with Traffic(ws.port) as traffic:
            time.sleep(2)
            swapped = ws.apply()
        out = swapped.stdout + swapped.stderr
        print(f"drain then swap: {traffic.sent} requests, {len(traffic.failures)} failed;",
              *[line.strip() for line in out.splitlines() if "swapping" in line][-1:])  # fmt: skip
        assert swapped.returncode == 0, out
        assert (
            f"{GEMMA}: unavailable " in out and f"s while swapping ({ALTERNATE} -> {ENGINE}" in out
        )
        pids = ws.supervisor_pids()
        assert ENGINE in pids and ALTERNATE not in pids, pids
        answer = httpx.post(
            f"http://127.0.0.1:{ws.port}/v1/completions",
            json={"model": GEMMA, "prompt": "Hello", "max_tokens": 4},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text

        # 3. converged: nothing to change, and no switch
        again = ws.apply()
        out = again.stdout + again.stderr
        assert again.returncode == 0, out
        assert recap_counts(out)[1] == 0, out
        assert "switched" not in out and "swapping" not in out


def test_the_memory_numbers_behind_the_knob(gemma_gguf) -> None:
    """The e2e test's ``max_memory_gb: 0.45`` holds one Gemma engine (ctx 2048) but not two."""
    from toolkit.models.gguf import read_gguf

    info = read_gguf(gemma_gguf)
    one = gemma_gguf.stat().st_size + kv_cache_bytes(info, 2048)
    assert one < 0.45 * GIB < 2 * one


def test_each_manager_removes_one_service_and_leaves_the_others() -> None:
    import subprocess

    from toolkit.services.definition import Service
    from toolkit.services.supervisor import Supervisor
    from toolkit.services.systemd import Systemd
    from toolkit.services.termux import Termux

    old = Service(ENGINE, "old engine", ["x"], "/srv")
    for manager in (Supervisor(), Systemd(system=False), Termux()):
        script = manager.remove_script([old])
        assert subprocess.run(["sh", "-n", "-c", script], timeout=30).returncode == 0, script
        assert ENGINE in script and "proxy" not in script and " all" not in script, script
