"""Open the right Connection for an inventory host."""

from __future__ import annotations

from pathlib import Path

from toolkit.hosts.connection import Connection, LocalConnection
from toolkit.hosts.ssh import SSHConnection
from toolkit.inventory import Host


def connect(
    host: Host,
    *,
    host_key_policy: str = "strict",
    become_password: str | None = None,
    known_hosts: Path | None = None,
    connect_timeout: float = 10.0,
) -> Connection:
    """A LocalConnection for ``connection: local`` hosts, else an SSHConnection.

    Nothing is opened yet: an SSHConnection connects on its first use.
    """
    if host.connection == "local":
        return LocalConnection(host.name, become=host.become)
    return SSHConnection(
        name=host.name,
        address=host.address,
        port=host.port,
        user=host.user,
        key_file=host.key_file,
        jump=host.jump,
        become=host.become,
        become_password=become_password,
        host_key_policy=host_key_policy,
        known_hosts=known_hosts or host.known_hosts,
        connect_timeout=connect_timeout,
    )
