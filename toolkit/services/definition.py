"""A long-running program toolkit keeps alive on a host, whatever supervises it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass
class Service:
    name: str  # e.g. "engine-gemma-3-270m", "proxy"; letters, digits, "-" only
    description: str
    argv: list[str]
    workdir: str
    env: dict[str, str] = field(default_factory=dict)
    health_url: str = ""  # on the host; 200 means ready
    inputs: list[str] = field(default_factory=list)  # resource ids whose change restarts it
    user: str | None = None  # run as this user where the manager can (systemd system units)

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)
