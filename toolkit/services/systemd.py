"""systemd units: what a real server uses. System units as root, user units otherwise.

Units are rendered into the data dir and enabled by path (``systemctl enable FILE`` links them),
so toolkit's files stay in one place and ``down`` can find them all.
"""

from __future__ import annotations

from toolkit.hosts.connection import quote
from toolkit.services.definition import Service
from toolkit.services.manager import DefinitionFile, ServiceManager, ServiceStatus


def unit_name(service: Service) -> str:
    return f"toolkit-{service.name}.service"


class Systemd(ServiceManager):
    name = "systemd"

    def __init__(self, system: bool, user: str | None = None):
        self.system = system
        self.user = user
        self.ctl = "systemctl" if system else "systemctl --user"

    def definitions(self, services, data_dir, host):
        return [
            DefinitionFile(
                f"systemd/{unit_name(s)}",
                "systemd.service.j2",
                {"service": s, "host": host, "system": self.system, "user": self.user},
            )
            for s in services
        ]

    def probe(self, services: list[Service]) -> str:
        units = " ".join(quote(unit_name(s)) for s in services)
        return f'for u in {units}; do printf \'%s %s\\n\' "$u" "$({self.ctl} is-active "$u")"; done'

    def parse_status(self, observed: str, services: list[Service]) -> ServiceStatus:
        by_unit = {unit_name(s): s.name for s in services}
        status = ServiceStatus(daemon_up=True)
        for line in observed.splitlines():
            unit, _, state = line.partition(" ")
            if unit in by_unit and state.strip() in ("active", "activating", "reloading"):
                status.running.add(by_unit[unit])
        return status

    def converge_script(self, status, services, start, restart, redefined) -> str:
        unit = {s.name: quote(unit_name(s)) for s in services}
        lines = []
        if redefined:
            lines.append(f"{self.ctl} daemon-reload || exit 1")
            for s in services:
                lines.append(
                    f'{self.ctl} enable "$TK_DATA"/systemd/{unit[s.name]} >/dev/null || exit 1'
                )
        if restart:
            lines.append(f"{self.ctl} restart {' '.join(unit[n] for n in restart)} || exit 1")
        if start:
            lines.append(f"{self.ctl} start {' '.join(unit[n] for n in start)} || exit 1")
        return "\n".join(lines) + "\n"

    def stop_script(self, services: list[Service]) -> str:
        units = " ".join(quote(unit_name(s)) for s in services)
        return f"{self.ctl} disable --now {units} 2>/dev/null; true\n"
