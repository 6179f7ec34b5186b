"""What every resource is: read current state, say what would change, make the change.

A resource contributes a shell snippet to the host's single batched probe (paths relative to
``$TK_DATA``, the host's data dir, so the snippet is known before facts are), then compares what
the probe printed with what it wants. Only the resources with a ``Change`` are applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from toolkit.hosts.shell import with_prelude

if TYPE_CHECKING:
    from toolkit.hosts.connection import Connection, Result
    from toolkit.hosts.facts import Facts
    from toolkit.inventory import Host
    from toolkit.site import Play


@dataclass
class HostContext:
    """Everything a resource may read while planning and applying on one host."""

    host: Host
    play: Play
    conn: Connection
    facts: Facts
    data_dir: str  # absolute path on the host
    vars: dict[str, Any]
    options: RunOptions
    resolved: dict[str, Any] = field(default_factory=dict)  # decisions made from facts
    # progress(label) -> callback(done, total); set by the reporter
    progress: Callable[[str], Callable[[int, int | None], None] | None] = lambda label: None
    # checks that must pass before a fetched model moves to the host (memory and disk room)
    preflight: Callable[[], None] = lambda: None
    # the run's blob relay (toolkit.relay.fanout.Fanout); None: the workstation pushes each copy
    fanout: Any = None

    def path(self, relative: str) -> str:
        return f"{self.data_dir}/{relative}"

    def sh(self, script: str, what: str, timeout: float | None = 600) -> Result:
        """Run ``script`` on the host with the tk_* functions and $TK_DATA; raise on failure."""
        return self.conn.check(with_prelude(script, self.data_dir), what, timeout=timeout)


@dataclass
class RunOptions:
    check: bool = False
    diff: bool = False
    verify_checksums: bool = False
    host_key_policy: str = "strict"
    forks: int = 20


@dataclass
class Change:
    resource: Resource
    summary: str  # what will be done, in a few words: "create", "install xllamacpp", ...
    diff: str = ""
    data: Any = None  # what plan() learnt that apply() needs


class Resource:
    """One thing converged on a host. Subclasses set ``id`` and implement the three steps."""

    id: str

    def probe(self, options: RunOptions) -> str:
        """POSIX shell whose stdout plan() receives; may use $TK_DATA and the tk_* functions."""
        return ""

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        """The change needed, or None when current state is right. ``pending``: ids changing."""
        raise NotImplementedError

    def apply(self, change: Change, ctx: HostContext) -> None:
        raise NotImplementedError
