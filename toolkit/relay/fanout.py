"""A run's blob fan-out: hosts that have, or are still receiving, a blob pass it on.

One ``Fanout`` per run, shared by every host's thread. ``place`` puts a blob at a path on one
host, all or nothing (as ``place_blob``: bytes land in ``<dest>.partial``, hashed, renamed when
the sha256 matches), taking its bytes from the source ``policy.choose_source`` names: another
host when one has a free upload slot, else the workstation (one stream per blob by default),
else it waits. So the workstation sends each blob about once whatever the number of hosts.

A host that starts receiving also starts a relay server (``hostside.py serve``, over its own
SSH connection, in a thread) and becomes a source as soon as the server prints its port: it
serves its copy while that copy still arrives, so a chain of hosts streams all at once and
the fan-out takes about one transfer's time.

Host to host, bytes go over a plain TCP stream to that server, guarded by a random token sent
over SSH to both ends, and checked by the receiver's sha256; not over SSH, because the hosts
hold no credentials for each other, and giving them some would mean writing keys into
``authorized_keys`` (a change of their security state toolkit should not make to move a file).
The integrity does not rest on the stream: every hop hashes what it wrote and renames only a
matching copy; a short, stalled or corrupted hop is refused and the host takes another source
(in the end the workstation's own push). The token keeps others from reading the blob off the
relay's port while it is open (the run's length).

A host's relay address is the server side of its SSH connection (``$SSH_CONNECTION``, probed
with the facts), or its ``relay_address`` var. The local host (hard links) never takes part;
nor does a host without python3 serve (it is fed by the workstation).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import Connection, LocalConnection, quote
from toolkit.relay.policy import WORKSTATION, Source, choose_source
from toolkit.resources.base import HostContext
from toolkit.resources.placement import link_or_copy, push_blob

HOSTSIDE = Path(__file__).with_name("hostside.py")
SERVER_START_S = 30.0  # for a relay server to print its port
WAIT_S = 6 * 3600.0  # for a free source (a blob's whole fan-out at worst)
RELAY_SLOTS = 1  # streams a host feeds at once (see policy.py: a chain is the fastest)
EXIT_UNREACHABLE = 3


class HopFailed(Exception):
    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


@dataclass
class RelayServer:
    """A hostside.py server on one host, serving one blob."""

    host: str
    conn: Connection
    token: str
    address: str
    port: int | None = None
    pid: int | None = None
    started: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass
class Blob:
    size: int
    sources: dict[str, Source]
    servers: dict[str, RelayServer] = field(default_factory=dict)
    upstreams: dict[str, str] = field(default_factory=dict)  # host -> the source feeding it now
    placed: set[str] = field(default_factory=set)  # hosts holding the whole blob
    next_order: int = 0


class Fanout:
    """The relay of one run. ``workstation_streams``: streams the workstation feeds per blob."""

    def __init__(
        self,
        workstation_streams: int = 1,
        relay_slots: int = RELAY_SLOTS,
        stall_s: float | None = None,
    ):
        self.workstation_streams = workstation_streams
        self.relay_slots = relay_slots
        self.stall_s = stall_s
        self._cond = threading.Condition()
        self._blobs: dict[str, Blob] = {}
        # what happened, per sha256: streams from the workstation, hops between hosts, refusals
        self.workstation_sends: Counter[str] = Counter()
        self.relayed: Counter[str] = Counter()
        self.fed_by: dict[tuple[str, str], str] = {}  # (sha256, host) -> source that fed it
        self.refusals: list[tuple[str, str, str]] = []  # (host, source, why)

    # -- placing -------------------------------------------------------------------------

    def place(self, ctx: HostContext, blob: Path, sha256: str, dest: str, what: str) -> None:
        if isinstance(ctx.conn, LocalConnection):
            link_or_copy(blob, Path(dest))
            return
        host = ctx.host.name
        state = self._blob(sha256, blob.stat().st_size)
        python = ctx.facts.python3
        address = str(ctx.vars.get("relay_address") or ctx.facts.ssh_address or "")
        if python and address:
            self._start_server(ctx, sha256, state, python, address, dest)
        refused: set[str] = set()
        placed = False
        try:
            while not placed:
                source = self._take(sha256, host, refused, hosts_allowed=bool(python))
                try:
                    if source.name == WORKSTATION:
                        progress = ctx.progress(f"send {what}")
                        push_blob(ctx, blob, sha256, dest, what, progress)
                    else:
                        self._pull(ctx, state, source.name, python, dest, sha256, what)
                        self.relayed[sha256] += 1
                    placed = True
                    self.fed_by[(sha256, host)] = source.name
                except HopFailed as exc:
                    refused.add(source.name)
                    self.refusals.append((host, source.name, str(exc)))
                    if exc.unreachable:
                        with self._cond:
                            source.dead = True
                finally:
                    self._release(sha256, host, source, done=placed)
        finally:
            if not placed:  # the hosts reading this host's copy must look elsewhere
                self._stop_server(sha256, host)

    def _blob(self, sha256: str, size: int) -> Blob:
        with self._cond:
            if sha256 not in self._blobs:
                workstation = Source(WORKSTATION, self.workstation_streams, complete=True)
                self._blobs[sha256] = Blob(size, {WORKSTATION: workstation})
            return self._blobs[sha256]

    def _take(self, sha256: str, host: str, refused: set[str], hosts_allowed: bool) -> Source:
        """Wait for the policy to name a source for ``host``, and occupy one of its slots."""
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            sources = self._blobs[sha256].sources
            while True:
                source = choose_source(sources, host, refused, hosts_allowed)
                if source is not None:
                    source.streams += 1
                    self._blobs[sha256].upstreams[host] = source.name
                    if host in sources:
                        sources[host].upstream = source.name
                    if source.name == WORKSTATION:
                        self.workstation_sends[sha256] += 1
                    return source
                if WORKSTATION in refused or time.monotonic() > deadline:
                    raise ToolkitError(f"{host}: no source left for blob {sha256[:12]}")
                self._cond.wait(timeout=1.0)

    def _release(self, sha256: str, host: str, source: Source, done: bool) -> None:
        with self._cond:
            source.streams -= 1
            self._blobs[sha256].upstreams.pop(host, None)
            mine = self._blobs[sha256].sources.get(host)
            if done:
                self._blobs[sha256].placed.add(host)
            if mine is not None:
                mine.upstream = None
                mine.complete = mine.complete or done
            self._cond.notify_all()

    def _pull(
        self, ctx: HostContext, state: Blob, source: str, python: str, dest: str, sha256: str, what
    ) -> None:
        """Have the host receive the blob from ``source``'s relay server (see hostside.py)."""
        server = state.servers[source]
        env = f"TK_RELAY_STALL_S={self.stall_s:g} " if self.stall_s else ""
        script = (
            f"{env}exec {quote(python)} -c {quote(HOSTSIDE.read_text())} receive "
            f"{quote(server.address)} {server.port} {quote(dest + '.partial')} {quote(dest)} "
            f"{state.size} {quote(sha256)}"
        )
        progress = ctx.progress(f"relay {what} from {source}")
        lines = LineReader(lambda line: report_got(line, state.size, progress))
        result = ctx.conn.run(
            script, stdin=server.token.encode() + b"\n", timeout=None, on_stdout=lines.feed
        )
        if not result.ok:
            why = (result.stderr.strip().splitlines() or [f"exit {result.rc}"])[-1]
            raise HopFailed(f"from {source}: {why}", result.rc == EXIT_UNREACHABLE)

    # -- relay servers -------------------------------------------------------------------

    def _start_server(
        self, ctx: HostContext, sha256: str, state: Blob, python: str, address: str, dest: str
    ) -> None:
        """Start this host's relay server in a thread; it becomes a source once it listens."""
        host = ctx.host.name
        with self._cond:
            if host in state.servers:
                return
            server = RelayServer(host, ctx.conn, secrets.token_hex(24), address)
            state.servers[host] = server
        env = f"TK_RELAY_STALL_S={self.stall_s:g} " if self.stall_s else ""
        script = (
            f"{env}exec {quote(python)} -u -c {quote(HOSTSIDE.read_text())} serve "
            f"{quote(address)} {quote(dest + '.partial')} {quote(dest)} {state.size}"
        )

        def listening(line: str) -> None:
            if line.startswith("port=") and not server.started.is_set():
                fields = dict(item.split("=", 1) for item in line.split())
                server.port, server.pid = int(fields["port"]), int(fields["pid"])
                with self._cond:
                    state.sources[host] = Source(
                        host,
                        self.relay_slots,
                        order=state.next_order,
                        upstream=state.upstreams.get(host),
                        complete=host in state.placed,
                    )
                    state.next_order += 1
                    self._cond.notify_all()
                server.started.set()

        lines = LineReader(listening)

        def run() -> None:
            with contextlib.suppress(Exception):  # a server that fails is just no source
                ctx.conn.run(
                    script, stdin=server.token.encode() + b"\n", timeout=None, on_stdout=lines.feed
                )
            with self._cond:  # ended (killed, or its host went away): no longer a source
                if host in state.sources:
                    state.sources[host].dead = True
                self._cond.notify_all()

        server.thread = threading.Thread(target=run, name=f"relay-{host}", daemon=True)
        server.thread.start()

    def _stop_server(self, sha256: str, host: str) -> None:
        state = self._blobs.get(sha256)
        server = state.servers.get(host) if state else None
        if server is None:
            return
        with self._cond:
            if host in state.sources:
                state.sources[host].dead = True
        if server.pid is None:
            server.started.wait(SERVER_START_S)
        if server.pid is not None:
            with contextlib.suppress(Exception):
                server.conn.run(f"kill {server.pid} 2>/dev/null; true", timeout=30)
        if server.thread is not None:
            server.thread.join(timeout=30)

    def close(self) -> None:
        """Stop every relay server of the run (by pid, over its host's connection)."""
        for sha256, state in list(self._blobs.items()):
            for host in list(state.servers):
                self._stop_server(sha256, host)

    def feeding(self, sha256: str) -> dict[str, str]:
        """Host -> the source feeding it now, for the blob ``sha256``."""
        with self._cond:
            state = self._blobs.get(sha256)
            return dict(state.upstreams) if state else {}

    def servers(self, sha256: str) -> dict[str, RelayServer]:
        state = self._blobs.get(sha256)
        return dict(state.servers) if state else {}


class LineReader:
    """Hands complete lines of a command's streamed stdout to ``on_line``."""

    def __init__(self, on_line):
        self.on_line = on_line
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.on_line(line.decode(errors="replace").strip())


def report_got(line: str, size: int, progress) -> None:
    if progress is not None and line.startswith("got="):
        progress(int(line[4:]), size)
