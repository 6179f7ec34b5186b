"""``toolkit logs HOST [SERVICE] [-n N] [-f]``: a service's log, wherever its manager keeps it.

supervisord's files under the data dir, the journal (``journalctl [--user] -u``), svlogd's
``current`` on Termux: the host's services manifest says which, and each ``ServiceManager``
knows how to read its own (``log_script``). ``-f`` follows by reading what came after the last
read once a second over the one connection (through sudo too), until interrupted.
"""

from __future__ import annotations

import difflib
import signal
import time
from collections.abc import Callable

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import CommandFailed, Connection, quote
from toolkit.hosts.shell import data_dir_assignment
from toolkit.inventory import Host
from toolkit.services import manifest
from toolkit.services.manifest import Manifest, ServiceEntry
from toolkit.status import data_dir_of

MARK = "@@toolkit-log "
FOLLOW_EVERY_S = 1.0


def read_manifest(conn: Connection, host: Host) -> Manifest:
    data_dir = data_dir_of(host)
    out = conn.run(f'{data_dir_assignment(data_dir)}\ncat "$TK_DATA/{manifest.RELPATH}"')
    if not out.ok:
        raise ToolkitError(
            f"{host.name}: no services manifest ({manifest.RELPATH}) in the data dir "
            f"{data_dir or '(default)'}: apply a playbook first, or set toolkit_data_dir in the "
            "inventory"
        )
    return manifest.parse(out.stdout, host.name)


def select(listed: Manifest, wanted: str | None) -> list[ServiceEntry]:
    """Every service, the one named ``wanted``, or the one whose name holds it (a model's
    name finds its engine); a clear error otherwise."""
    if not wanted:
        return listed.services
    names = [s.name for s in listed.services]
    exact = [s for s in listed.services if s.name == wanted]
    found = exact or [s for s in listed.services if wanted in s.name]
    if len(found) == 1:
        return found
    if found:
        raise ToolkitError(
            f'"{wanted}" matches several services: {", ".join(s.name for s in found)}; name one'
        )
    close = difflib.get_close_matches(wanted, names, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    raise ToolkitError(f'no service "{wanted}" (services: {", ".join(names)}){hint}')


def read_logs(
    conn: Connection,
    host: Host,
    listed: Manifest,
    services: list[ServiceEntry],
    lines: int,
    cursors: dict[str, str | None] | None = None,
) -> dict[str, tuple[str, str | None]]:
    """One round trip: each service's last ``lines`` lines, or what followed its cursor.
    Returns name -> (text, cursor of the next read)."""
    manager = listed.manager
    parts = [data_dir_assignment(data_dir_of(host))]
    for entry in services:
        cursor = (cursors or {}).get(entry.name)
        parts.append(f"echo; echo {quote(MARK + entry.name)}")
        parts.append(manager.log_script(quote(entry.name), lines, cursor))
    out = conn.run("\n".join(parts), timeout=60)
    if MARK not in out.stdout:
        raise CommandFailed(f"reading logs on {host.name}", out)
    found = {}
    for chunk in out.stdout.split("\n" + MARK)[1:]:
        name, _, body = chunk.partition("\n")
        found[name] = manager.read_log(body)
    return found


def show(
    conn: Connection,
    host: Host,
    wanted: str | None,
    lines: int,
    follow: bool,
    echo: Callable[[str], None],
) -> None:
    """Print the log(s), then (``follow``) what is written to them until interrupted."""
    listed = read_manifest(conn, host)
    services = select(listed, wanted)
    many = len(services) > 1
    # at least one line, so the journal says where it ends (it gives no cursor for none)
    read = read_logs(conn, host, listed, services, max(lines, 1))
    cursors: dict[str, str | None] = {}
    for entry in services:
        text, cursors[entry.name] = read.get(entry.name, ("", None))
        if lines == 0:
            text = ""
        if many and not follow:
            echo(f"==> {entry.name} ({entry.log}) <==")
        _print(text, entry.name if many and follow else "", echo)
    if not follow:
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(FOLLOW_EVERY_S)
            read = read_logs(conn, host, listed, services, lines, cursors)
            for entry in services:
                text, cursor = read.get(entry.name, ("", None))
                cursors[entry.name] = cursor or cursors[entry.name]
                _print(text, entry.name if many else "", echo)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print(text: str, prefix: str, echo: Callable[[str], None]) -> None:
    for line in text.splitlines():
        echo(f"{prefix} | {line}" if prefix else line)


def command(host_name: str, service: str | None, lines: int, follow: bool,
            inventories: list[str], defaults: dict, host_key_policy: str) -> None:  # fmt: skip
    """``toolkit logs``: HOST is an inventory host name (or a pattern matching one host)."""
    import click

    from toolkit.assets import asset_path
    from toolkit.hosts.connect import connect
    from toolkit.inventory import load_inventory

    sources = inventories or asset_path("inventory/localhost.yml")
    hosts = load_inventory(sources, defaults=defaults).select(host_name)
    if len(hosts) != 1:
        which = ", ".join(h.name for h in hosts) if hosts else "none"
        raise ToolkitError(f'"{host_name}" must match one host of the inventory (matches: {which})')
    if hosts[0].unsupported:
        raise ToolkitError(hosts[0].unsupported)
    with connect(hosts[0], host_key_policy=host_key_policy) as conn:
        show(conn, hosts[0], service, lines, follow, click.echo)
