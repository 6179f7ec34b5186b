"""Switching a model to a changed engine (new file, new args) without dropping its requests.

Each model whose runtime runs one engine per model and can say how many requests an engine holds
(``Runtime.in_flight_gauges``) has two stable service slots: ``engine-<model>`` and
``engine-<model>-alt``, each on a port of its own. The services manifest (``services.json``)
says which slot serves the model now (``Facts.services``). When an apply would restart that
engine, the changed engine goes into the other slot instead, in one of two ways:

- **side by side**, where the fit check says old and new fit in memory together: start the new
  engine, wait for its health, point the routes file at it (the proxy reloads it without
  dropping anything), wait until the proxy routes there and the old engine holds no request
  (bounded by ``DRAIN_DEADLINE_S``), then stop and remove the old service. The model answers
  throughout.
- **drain, then swap**, where it does not fit twice: point the routes file at the new slot (new
  requests get a quick 503 "retry" from the proxy), let the old engine finish what it holds, stop
  and remove it, then start the new engine and wait for its health. The recap says how long the
  model was unavailable.

Without a proxy (clients call the engine's port) or while the proxy itself restarts, or for a
runtime that runs one daemon for all its models (Ollama: a model change there is an import or
pull, no engine restart), engines restart in place as before.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.resources.base import Change, HostContext, Resource
from toolkit.runtimes.base import Served
from toolkit.services.definition import Service
from toolkit.services.manager import ServiceManager

ALTERNATE_SUFFIX = "-alt"
SIDE_BY_SIDE = "side by side"
DRAIN_THEN_SWAP = "drain then swap"
DRAIN_RELPATH = "bin/drain_check.py"
READY_DEADLINE_S = 300  # the new engine loading its model
DRAIN_DEADLINE_S = 120  # the old engine finishing what it holds; stopped anyway after this
QUIET_S = 3.0  # the old engine idle this long (> 2 routes polls of the proxy) before it stops


def alternate_name(primary: str) -> str:
    return primary + ALTERNATE_SUFFIX


def live_slot(primary: str, applied: list[str]) -> int:
    """Which slot serves a model now: the alternate (1) when the last apply left it and not the
    primary, else the primary (0)."""
    return 1 if alternate_name(primary) in applied and primary not in applied else 0


def switch_mode(fits_twice: bool) -> str:
    """Old and new engines side by side when both fit in memory, else one after the other."""
    return SIDE_BY_SIDE if fits_twice else DRAIN_THEN_SWAP


@dataclass
class Slots:
    """A switchable model's two engines as this design places them."""

    live: Served  # the slot serving the model now (as the host says)
    wanted: Served  # the slot this design serves it from (the other one when switching)
    spare: Served  # the slot not wanted: what ``down`` also stops

    @property
    def switching(self) -> bool:
        return self.live.service.name != self.wanted.service.name


@dataclass
class Switch:
    """One host's switch in this run: which models, how, and what it measured for the recap."""

    mode: str
    slots: dict[str, Slots]  # model name -> its slots, for the models switching
    runtimes: dict[str, tuple[str, tuple[str, ...]]]  # model -> (metrics path, in-flight gauges)
    manager: ServiceManager
    proxy_metrics: str  # the proxy's /metrics URL on the host
    keys_file: str | None = None
    routed_at: float | None = None  # when the routes file pointed at the new engines
    ready_at: float | None = None  # when the new engines answered their health check
    drain: dict = field(default_factory=dict)  # drain_check.py's answer

    @property
    def old(self) -> list[Service]:
        return [s.live.service for s in self.slots.values()]

    @property
    def new(self) -> list[Service]:
        return [s.wanted.service for s in self.slots.values()]

    def outcome(self) -> dict[str, str]:
        """The recap's line for each switched model."""
        moved = {
            m: f"{s.live.service.name} -> {s.wanted.service.name}" for m, s in self.slots.items()
        }
        drained = self.drain.get("drained_s")
        tail = f"; the old engine finished its requests in {drained:.1f} s" if drained else ""
        if self.drain.get("busy"):
            tail = (
                f"; the old engine still held {self.drain['busy']} request(s) after "
                f"{DRAIN_DEADLINE_S} s and was stopped"
            )
        if self.mode == SIDE_BY_SIDE:
            text = "switched without a gap"
        elif self.routed_at is not None and self.ready_at is not None:
            text = f"unavailable {self.ready_at - self.routed_at:.1f} s while swapping"
        else:
            text = "swapped"
        return {m: f"{text} ({moved[m]}{tail})" for m in self.slots}


def order(resources: list[Resource], routes: Resource, manifest: Resource, switch: Switch,
          services: Resource) -> list[Resource]:  # fmt: skip
    """The host's resources with the switch's steps in place. ``resources`` ends with the
    service definitions; the routes file and the manifest are not in it."""
    ready, retire = EnginesReady(switch), OldEnginesRetired(switch)
    if switch.mode == SIDE_BY_SIDE:
        steps = [services, ready, routes, retire]
    else:
        steps = [routes, retire, services, ready]
    return [*resources, *steps, manifest]


class _Step(Resource):
    """A step of a switch: always a change in the run that switches (its design has it)."""

    def __init__(self, switch: Switch):
        self.switch = switch

    def probe(self, options) -> str:
        return ""


class EnginesReady(_Step):
    id = "switch:ready"

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        names = ", ".join(s.name for s in self.switch.new)
        return Change(self, f"wait until {names} answer{'s' if ',' not in names else ''}")

    def apply(self, change: Change, ctx: HostContext) -> None:
        from toolkit.engine import exited_message, waiting_text  # the engine's own wording

        manager, services = self.switch.manager, self.switch.new
        prefix = f"TK_DATA={quote(ctx.data_dir)}\n"
        spec = {
            "urls": [s.health_url for s in services],
            "deadline_s": READY_DEADLINE_S,
            "watch": {
                "script": prefix + manager.state_script(" ".join(quote(s.name) for s in services)),
                "services": {s.health_url: s.name for s in services},
                "tails": {s.name: prefix + manager.log_script(quote(s.name), 20) for s in services},
            },
        }
        python, checker = ctx.path("venv/bin/python"), ctx.path("bin/health_check.py")
        out = ctx.conn.run(f"{quote(python)} {quote(checker)} {quote(json.dumps(spec))}",
                           timeout=READY_DEADLINE_S + 60)  # fmt: skip
        try:
            report = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {}
        if out.rc == 0 and report:
            self.switch.ready_at = time.monotonic()
            return
        logs = {s.name: manager.log_location(s, ctx.data_dir) for s in services}
        if report.get("failed"):
            why = exited_message(report["failed"], logs)
        else:
            waiting = report.get("waiting", {})
            why = "not healthy after {} s: {}".format(
                READY_DEADLINE_S,
                ", ".join(
                    waiting_text(
                        s.name,
                        report.get("health", {}).get(s.health_url, 0),
                        waiting.get(s.name, {}),
                    )
                    for s in services
                ),  # fmt: skip
            )
        if self.switch.mode == SIDE_BY_SIDE:
            # the old engines still serve: the new ones go, and the routes stay as they were
            ctx.sh(manager.remove_script(services), "removing the new engines", timeout=120)
            why += "\nthe model stays on its running engine; the new one was removed"
        raise ToolkitError(why)


class OldEnginesRetired(_Step):
    id = "switch:retire"

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        names = ", ".join(s.name for s in self.switch.old)
        return Change(self, f"{self.switch.mode}: drain and remove {names}")

    def apply(self, change: Change, ctx: HostContext) -> None:
        switch = self.switch
        switch.routed_at = time.monotonic()  # the routes file was written just before
        engines = []
        for model, slots in switch.slots.items():
            path, gauges = switch.runtimes[model]
            engines.append({"url": slots.live.backend["url"] + path, "gauges": list(gauges)})
        spec = {
            "proxy_metrics": switch.proxy_metrics,
            "keys_file": switch.keys_file,
            "new": [s.wanted.backend["url"] for s in switch.slots.values()],
            "old": [s.live.backend["url"] for s in switch.slots.values()],
            "engines": engines,
            "quiet_s": QUIET_S,
            "deadline_s": DRAIN_DEADLINE_S,
        }
        python = ctx.path("venv/bin/python")
        out = ctx.conn.run(
            f"{quote(python)} {quote(ctx.path(DRAIN_RELPATH))} {quote(json.dumps(spec))}",
            timeout=DRAIN_DEADLINE_S * 2 + 60,
        )
        try:
            switch.drain = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            switch.drain = {}
        names = ", ".join(s.name for s in switch.old)
        ctx.sh(switch.manager.remove_script(switch.old), f"removing {names}", timeout=120)
