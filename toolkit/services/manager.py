"""What a service manager offers toolkit: its definition files, a status probe and control."""

from __future__ import annotations

from dataclasses import dataclass, field

from toolkit.services.definition import Service


@dataclass
class ServiceStatus:
    daemon_up: bool  # the manager itself answers (always true for systemd)
    running: set[str] = field(default_factory=set)  # service names running now


@dataclass
class DefinitionFile:
    relpath: str  # under the host's data dir
    template: str
    variables: dict
    mode: int = 0o644


class ServiceManager:
    name: str
    restarts_redefined = False  # does loading changed definitions restart those services?
    package_manager: str | None = None  # "pkg" | "apt" | "brew": installs ``packages``
    packages: tuple[str, ...] = ()  # system packages the manager (and toolkit with it) needs

    def definitions(
        self, services: list[Service], data_dir: str, host: str
    ) -> list[DefinitionFile]:
        raise NotImplementedError

    def probe(self, services: list[Service]) -> str:
        raise NotImplementedError

    def parse_status(self, observed: str, services: list[Service]) -> ServiceStatus:
        raise NotImplementedError

    def converge_script(
        self,
        status: ServiceStatus,
        services: list[Service],
        start: list[str],
        restart: list[str],
        redefined: bool,
    ) -> str:
        """Shell that makes the manager load new definitions, start and restart services."""
        raise NotImplementedError

    def stop_script(self, services: list[Service]) -> str:
        """Shell that stops every service and the manager toolkit started, if any."""
        raise NotImplementedError
