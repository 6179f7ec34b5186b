"""Which source feeds a host that needs a blob: the relay's selection rule, nothing else.

The sources of one blob are the workstation and every host that has it or is receiving it in
this run. ``choose_source`` picks, for ``host``:

1. never ``host`` itself, a source marked dead (its relay could not be reached), one this host
   already refused (a failed or corrupted hop from it), one with no free upload slot, nor a
   source that ``host`` feeds, directly or further down (that would be a loop: each would wait
   on the other's bytes);
2. a host before the workstation, so the workstation's uplink carries each blob a bounded
   number of times (its ``slots``, 1 by default) whatever the number of hosts;
3. among hosts: one holding the whole blob before one still receiving it, then the one that
   became a source first (nearest the root of the chain: the furthest ahead), then by name;
4. the workstation when no host qualifies and it has a free slot; hosts that cannot relay
   (no python3 on them) may only take the workstation;
5. else None: wait until a slot frees or a new source appears.

Hosts have one upload slot by default: with links of the same speed up and down, a chain
that streams each hop while it arrives carries the blob at full link speed to every host, and
the whole fan-out takes about one transfer; a tree of fan-out k would give each child 1/k.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

WORKSTATION = "(workstation)"


@dataclass
class Source:
    name: str  # a host's inventory name, or WORKSTATION
    slots: int  # streams it may feed at once
    streams: int = 0  # streams it feeds now
    complete: bool = False  # holds the whole blob (the workstation always does)
    dead: bool = False  # its relay could not be reached: nobody takes it again
    upstream: str | None = None  # the source feeding it now, while it receives
    order: int = 0  # when it became a source: lower is nearer the root

    @property
    def free(self) -> bool:
        return self.streams < self.slots and not self.dead


def feeds(sources: Mapping[str, Source], candidate: str, host: str) -> bool:
    """True when ``host`` is upstream of ``candidate`` (``candidate`` receives from it)."""
    seen: set[str] = set()
    current = sources.get(candidate)
    while current is not None and current.upstream and current.name not in seen:
        seen.add(current.name)
        if current.upstream == host:
            return True
        current = sources.get(current.upstream)
    return False


def choose_source(
    sources: Mapping[str, Source],
    host: str,
    refused: set[str] = frozenset(),
    hosts_allowed: bool = True,
) -> Source | None:
    """The source that should feed ``host`` now, by the rule in this module's docstring."""
    candidates = [
        source
        for name, source in sources.items()
        if name != host and name not in refused and source.free and not feeds(sources, name, host)
    ]
    relays = [s for s in candidates if s.name != WORKSTATION] if hosts_allowed else []
    if relays:
        return min(relays, key=lambda s: (not s.complete, s.order, s.name))
    return next((s for s in candidates if s.name == WORKSTATION), None)
