"""What toolkit runs on a host, as written beside the service definitions: ``services.json``.

``apply`` renders it with the definitions (every ``ServiceManager.definitions`` adds it), so
``toolkit status`` and ``toolkit logs`` need no playbook: they read from the host which manager
supervises which services, where each answers its health check and where its log is. It
describes what was last applied, not what the playbook says now.

The file is JSON with the manager first and one key per line; the status probe picks the manager
out of it with a shell ``case`` (no JSON parser needed on the host).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from toolkit.errors import ToolkitError
from toolkit.services.definition import Service
from toolkit.services.manager import DefinitionFile, ServiceManager

RELPATH = "services.json"


def definition(manager: ServiceManager, services: list[Service], data_dir: str) -> DefinitionFile:
    """The manifest of ``services`` as one more definition file."""
    text = json.dumps(
        {
            "manager": manager.kind,
            "services": [
                {
                    "name": s.name,
                    "description": s.description,
                    "health_url": s.health_url,
                    "log": manager.log_location(s, data_dir),
                }
                for s in services
            ],
        },
        indent=1,
    )
    return DefinitionFile(RELPATH, "services.json.j2", {"manifest": text})


@dataclass
class ServiceEntry:
    name: str
    description: str = ""
    health_url: str = ""
    log: str = ""

    def as_service(self) -> Service:
        return Service(self.name, self.description, [], "", health_url=self.health_url)


@dataclass
class Manifest:
    kind: str  # ServiceManager.kind: supervisor | systemd | systemd-user | termux
    services: list[ServiceEntry] = field(default_factory=list)

    @property
    def manager(self) -> ServiceManager:
        return manager_for(self.kind)

    def service_list(self) -> list[Service]:
        return [entry.as_service() for entry in self.services]


def parse(text: str, where: str) -> Manifest:
    try:
        raw = json.loads(text)
        return Manifest(
            raw["manager"],
            [
                ServiceEntry(
                    str(s["name"]),
                    str(s.get("description", "")),
                    str(s.get("health_url") or ""),
                    str(s.get("log") or ""),
                )
                for s in raw["services"]
            ],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ToolkitError(
            f"{where}: unreadable {RELPATH} ({exc}); apply the playbook again"
        ) from None


def manager_for(kind: str) -> ServiceManager:
    """The manager a manifest names, with the settings its kind implies."""
    from toolkit.services.supervisor import Supervisor
    from toolkit.services.systemd import Systemd
    from toolkit.services.termux import Termux

    managers = {
        "supervisor": Supervisor,
        "systemd": lambda: Systemd(system=True),
        "systemd-user": lambda: Systemd(system=False),
        "termux": Termux,
    }
    if kind not in managers:
        raise ToolkitError(f"unknown service manager {kind!r} in {RELPATH}")
    return managers[kind]()
