"""The services of a host as one resource: started when stopped, restarted when an input changed.

It comes last in a host's plan, so it knows which of its services' inputs (definition, model,
virtualenv, code) change in this run: each affected service restarts once, and only then.
"""

from __future__ import annotations

from toolkit.resources.base import Change, HostContext, Resource, RunOptions
from toolkit.services.definition import Service
from toolkit.services.manager import ServiceManager


class Services(Resource):
    id = "services"

    def __init__(self, manager: ServiceManager, services: list[Service], definition_ids: set[str]):
        self.manager = manager
        self.services = services
        self.definition_ids = definition_ids

    def probe(self, options: RunOptions) -> str:
        return self.manager.probe(self.services)

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        status = self.manager.parse_status(observed, self.services)
        redefined = bool(self.definition_ids & pending)
        start, restart, why = [], [], {}
        for service in self.services:
            changed = [
                i
                for i in service.inputs
                if i in pending
                and not (self.manager.restarts_redefined and i in self.definition_ids)
            ]
            if service.name not in status.running:
                start.append(service.name)
            elif changed:
                restart.append(service.name)
                why[service.name] = ", ".join(changed)
        if not (start or restart or redefined):
            return None
        parts = []
        if not status.daemon_up:
            parts.append(f"start {self.manager.name}")
        if start:
            parts.append("start " + ", ".join(start))
        if restart:
            parts.append("restart " + ", ".join(f"{n} ({why[n]} changed)" for n in restart))
        if redefined and not parts:
            parts.append(f"reload {self.manager.name} definitions")
        script = self.manager.converge_script(status, self.services, start, restart, redefined)
        return Change(self, "; ".join(parts), data=script)

    def apply(self, change: Change, ctx: HostContext) -> None:
        ctx.sh(change.data, f"starting services with {self.manager.name}", timeout=120)
