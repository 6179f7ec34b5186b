"""Open the right Connection for an inventory host."""

from __future__ import annotations

import shlex
from pathlib import Path

from toolkit.hosts.connection import Connection, LocalConnection
from toolkit.hosts.ssh import SSHConnection
from toolkit.inventory import SSH_ARGS_KEYS, Host


def known_hosts_of(host: Host) -> Path | None:
    """``-o UserKnownHostsFile=PATH`` from the host's ``ansible_ssh_common_args`` /
    ``ansible_ssh_extra_args``, as Ansible passes it to ssh; None means ~/.ssh/known_hosts."""
    for key in SSH_ARGS_KEYS:
        try:
            tokens = shlex.split(str(host.vars.get(key) or ""))
        except ValueError:
            continue
        for index, token in enumerate(tokens):
            option = token[2:] if token.startswith("-o") and token != "-o" else None
            if token == "-o" and index + 1 < len(tokens):
                option = tokens[index + 1]
            if option is None:
                continue
            name, sep, value = option.partition("=")
            if not sep:
                name, _, value = option.partition(" ")
            if name.strip().lower() == "userknownhostsfile" and value.strip():
                return Path(value.strip()).expanduser()
    return None


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
        known_hosts=known_hosts or known_hosts_of(host),
        connect_timeout=connect_timeout,
    )
