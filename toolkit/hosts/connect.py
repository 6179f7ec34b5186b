"""Open the right Connection for an inventory host."""

from __future__ import annotations

from pathlib import Path

from toolkit.hosts.connection import Connection, LocalConnection
from toolkit.hosts.ssh import SSHConnection
from toolkit.hosts.sshconfig import SSHConfigError, parse_ssh_args
from toolkit.inventory import JUMP_KEYS, PORT_KEYS, SSH_ARGS_KEYS, USER_KEYS, Host


def connect(
    host: Host,
    *,
    host_key_policy: str = "strict",
    become_password: str | None = None,
    known_hosts: Path | None = None,
    connect_timeout: float = 10.0,
) -> Connection:
    """A LocalConnection for ``connection: local`` hosts, else an SSHConnection.

    What the inventory sets (``ansible_host``, ``ansible_port``, ``ansible_user``,
    ``ansible_ssh_private_key_file``, ``ansible_jump_host``, then the ``-o``/``-J``/``-i``/``-F``
    options of ``ansible_ssh_common_args`` and ``ansible_ssh_extra_args``) wins over ssh_config,
    which wins over the defaults. Nothing is opened yet: an SSHConnection connects on first use.
    """
    if host.connection == "local":
        return LocalConnection(host.name, become=host.become)
    options: list[tuple[str, str]] = []
    config_file = None
    args_error = None
    for key in SSH_ARGS_KEYS:
        if host.vars.get(key):
            try:
                found, named_file = parse_ssh_args(str(host.vars[key]))
            except SSHConfigError as exc:
                args_error = f"{key}: {exc}"
                continue
            options += found
            config_file = config_file or named_file
    connection = SSHConnection(
        name=host.name,
        address=host.address,
        port=_set(host, PORT_KEYS),
        user=_set(host, USER_KEYS),
        key_file=host.key_file,
        jump=_set(host, JUMP_KEYS),
        become=host.become,
        become_password=become_password,
        host_key_policy=host_key_policy,
        known_hosts=known_hosts,
        connect_timeout=connect_timeout,
        ssh_options=options,
        ssh_config=config_file,
    )
    if args_error:
        connection.refuse(args_error)
    return connection


def _set(host: Host, keys: tuple[str, ...]):
    """The host's value for the first of ``keys`` it sets, or None (then ssh_config decides)."""
    for key in keys:
        if host.vars.get(key) is not None:
            return host.vars[key]
    return None
