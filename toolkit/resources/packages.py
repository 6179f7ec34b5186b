"""System packages a host needs, installed with its own package manager: all at once, or none.

``Packages("pkg", ["python", "termux-services"])`` on Termux, ``"apt"`` on Debian and Ubuntu,
``"brew"`` on macOS. The probe asks the package database what is installed (``dpkg -s``, which
Termux's pkg also keeps; ``brew list``); apply runs ONE install command for everything missing,
so a host is never left with half of a set. When the package manager fails, its own error is
shown (the last lines of what it printed), and the host fails before anything that needs the
packages is set up. On a host without internet (``offline: true``) a missing package is refused
while planning, before anything runs: its package manager would have to fetch it.
"""

from __future__ import annotations

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.offline import OfflineRefused, is_offline
from toolkit.resources.base import Change, HostContext, Resource, RunOptions

MANAGERS = ("pkg", "apt", "brew")
ERROR_LINES = 12  # of the package manager's output, in the error

# One install command per manager; {names} is the quoted list of what is missing.
INSTALL = {
    # Termux: pkg wraps apt and updates its lists itself when they are old; there is no root.
    "pkg": "pkg install -y {names}",
    # A fresh Debian/Ubuntu (a container, a cloud image) may have no package lists yet.
    "apt": (
        "export DEBIAN_FRONTEND=noninteractive\n"
        "apt-get install -y -q --no-install-recommends {names} "
        "|| { apt-get update -q && apt-get install -y -q --no-install-recommends {names}; }"
    ),
    "brew": "HOMEBREW_NO_AUTO_UPDATE=1 brew install {names}",
}


def install_command(manager: str, names: list[str]) -> str:
    return INSTALL[manager].format(names=" ".join(quote(n) for n in names))


class Packages(Resource):
    """``names`` installed with ``manager`` (pkg | apt | brew)."""

    def __init__(self, manager: str, names: list[str]):
        if manager not in MANAGERS:
            raise ValueError(f"unknown package manager {manager!r}")
        self.manager = manager
        self.names = list(dict.fromkeys(names))  # once each, in the order given
        self.id = f"packages:{manager}:{','.join(self.names)}"

    def probe(self, options: RunOptions) -> str:
        names = " ".join(quote(n) for n in self.names)
        if self.manager == "brew":
            return f'for p in {names}; do brew list --versions "$p" >/dev/null 2>&1 && echo "$p"; done; true'
        return (
            f"for p in {names}; do "
            'dpkg -s "$p" 2>/dev/null | grep -q \'^Status: install ok installed\' && echo "$p"; '
            "done; true"
        )

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        installed = {line.strip() for line in observed.splitlines()}
        missing = [name for name in self.names if name not in installed]
        if not missing:
            return None
        if ctx is not None and is_offline(ctx.vars):
            raise OfflineRefused(
                f"host {ctx.host.name} is offline: {self.manager} install {' '.join(missing)} "
                "would need its internet; install them on the host first"
            )
        return Change(self, f"{self.manager} install {' '.join(missing)}", data=missing)

    def apply(self, change: Change, ctx: HostContext) -> None:
        command = install_command(self.manager, change.data)
        # apt needs root: sudo when toolkit is not root there; pkg and brew refuse root.
        become = self.manager == "apt" and ctx.facts.uid != 0
        result = ctx.conn.run(command, become=become, timeout=3600)
        if not result.ok:
            output = (result.stdout + "\n" + result.stderr).strip().splitlines()
            tail = "\n".join(f"  {line}" for line in output[-ERROR_LINES:])
            raise ToolkitError(
                f"{self.manager} install {' '.join(change.data)} failed (exit {result.rc}):\n{tail}"
            )


def merged(resources: list[Resource]) -> list[Resource]:
    """The resources with every ``Packages`` of one manager folded into the first of them, so
    a host runs one install command per package manager."""
    first: dict[str, Packages] = {}
    out: list[Resource] = []
    for resource in resources:
        if not isinstance(resource, Packages):
            out.append(resource)
            continue
        if resource.manager in first:
            head = first[resource.manager]
            names = head.names + [n for n in resource.names if n not in head.names]
            merged_head = Packages(head.manager, names)
            out[out.index(head)] = merged_head
            first[resource.manager] = merged_head
        else:
            first[resource.manager] = resource
            out.append(resource)
    return out
