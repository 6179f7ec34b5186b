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

    def restarts(self, observed: str, pending: set[str]) -> dict[str, list[str]]:
        """The running services an input change restarts (whoever does it: toolkit, or the
        manager loading changed definitions): name -> the inputs that changed."""
        return self._decide(observed, pending)[2]

    def _decide(self, observed: str, pending: set[str]):
        status = self.manager.parse_status(observed, self.services)
        start, changed = [], {}
        for service in self.services:
            inputs = [i for i in service.inputs if i in pending]
            if service.name not in status.running:
                start.append(service.name)
            elif inputs:
                changed[service.name] = inputs
        return status, start, changed

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        status, start, changed = self._decide(observed, pending)
        redefined = bool(self.definition_ids & pending)
        restart, why = [], {}
        for name, inputs in changed.items():
            # a manager that restarts what it reloads changed (supervisord) restarts those itself
            shown = [
                i
                for i in inputs
                if not (self.manager.restarts_redefined and i in self.definition_ids)
            ]
            if shown:
                restart.append(name)
                why[name] = ", ".join(shown)
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
