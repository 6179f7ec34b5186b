"""Placing one blob on every host of a switched SSH bed (tests/sshbed.py), as apply places a
model: the placement path (``place_blob``) of each host in a thread of its own, with or without
the run's fan-out. Shared by tests/test_relay.py and bench/fanout.py.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.sshbed import SSHBed
from toolkit.engine import probe_script, split_probe
from toolkit.hosts.facts import parse_facts
from toolkit.inventory import Host
from toolkit.relay.fanout import Fanout
from toolkit.resources.base import HostContext, RunOptions
from toolkit.resources.placement import place_blob

BLOB_RELPATH = "models/sha256-{sha}.gguf"


def make_blob(path: Path, size: int) -> str:
    """A file of ``size`` random bytes at ``path``; returns its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 22))
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


@dataclass
class Placement:
    """What one placement round did: per host, its seconds and error (or "")."""

    seconds: float
    errors: dict[str, str] = field(default_factory=dict)
    progress: dict[str, list[tuple[int, int | None]]] = field(default_factory=dict)


def host_contexts(bed: SSHBed) -> list[HostContext]:
    """One connected HostContext per host of the bed, its facts probed as apply does."""
    contexts = []
    for bed_host in bed.hosts:
        conn = bed_host.connect()
        out = conn.run(probe_script(None, [], RunOptions()), timeout=60)
        facts = parse_facts(split_probe(out.stdout)[0])
        contexts.append(
            HostContext(
                host=Host(bed_host.name, bed_host.inventory_vars(), ["bed"]),
                play=None,
                conn=conn,
                facts=facts,
                data_dir=facts.data_dir,
                vars={},
                options=RunOptions(),
            )
        )
    return contexts


def place_everywhere(
    contexts: list[HostContext], blob: Path, sha256: str, fanout: Fanout | None
) -> Placement:
    """``place_blob`` on every host at once (a thread each, as the engine runs hosts)."""
    placement = Placement(0.0)

    def one(ctx: HostContext) -> None:
        seen = placement.progress.setdefault(ctx.host.name, [])
        ctx.progress = lambda label: lambda done, total: seen.append((done, total))
        ctx.fanout = fanout
        try:
            place_blob(ctx, blob, sha256, ctx.path(BLOB_RELPATH.format(sha=sha256)), "blob")
        except Exception as exc:  # noqa: BLE001 - reported per host, as the engine does
            placement.errors[ctx.host.name] = f"{type(exc).__name__}: {exc}"

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(contexts)) as pool:
        list(pool.map(one, contexts))
    placement.seconds = time.monotonic() - started
    return placement


def remove_blob(contexts: list[HostContext], sha256: str) -> None:
    path = BLOB_RELPATH.format(sha=sha256)
    for ctx in contexts:
        ctx.conn.run(f"rm -f {ctx.path(path)} {ctx.path(path)}.partial", timeout=60)
