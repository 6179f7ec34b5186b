"""The blob relay on a simulated network: three hosts, each in a network namespace of its own
with its own sshd, on a bridge, every link (and the workstation's uplink) rate-limited.

Checks that the workstation sends the blob once and the hosts pass it on, that each host's copy
is verified (a corrupted hop is refused and taken again from another source), and that a relay
killed mid-stream makes its downstream host fall back while the run still converges, leaving
no partial file anywhere.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import processes_mentioning
from tests.fanout_bed import (
    BLOB_RELPATH,
    host_contexts,
    make_blob,
    place_everywhere,
    remove_blob,
)
from tests.sshbed import BedUnavailable, SSHBed
from toolkit.relay.fanout import Fanout
from toolkit.relay.policy import WORKSTATION

RATE_MBIT = 32  # 4 MB/s a link: a few seconds a blob, long enough to act mid-stream
BLOB_SIZE = 8 << 20
RELAY_MARK = "One hop of a blob relay"  # in the command line of every relay process


@pytest.fixture(scope="module")
def bed():
    try:
        bed = SSHBed(count=3, switched=True, rate_mbit=RATE_MBIT).start()
    except BedUnavailable as exc:
        if os.environ.get("TOOLKIT_SKIP_SSHBED") == "1":
            pytest.skip(f"sshd test bed unavailable: {exc}")
        raise
    try:
        yield bed
    finally:
        bed.stop()


@pytest.fixture(scope="module")
def contexts(bed):
    contexts = host_contexts(bed)
    try:
        yield contexts
    finally:
        for ctx in contexts:
            ctx.conn.close()


@pytest.fixture
def blob(tmp_path, contexts):
    path = tmp_path / "blob.gguf"
    sha = make_blob(path, BLOB_SIZE)
    yield path, sha
    remove_blob(contexts, sha)


def local(ctx, sha: str) -> Path:
    """The placed file of a bed host, seen from this machine (the hosts' homes are local)."""
    return Path(ctx.path(BLOB_RELPATH.format(sha=sha)))


def assert_placed_everywhere(contexts, sha: str) -> None:
    for ctx in contexts:
        path = local(ctx, sha)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, ctx.host.name
        assert not path.with_name(path.name + ".partial").exists(), ctx.host.name
        leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
        assert leftovers == [], (ctx.host.name, leftovers)


def test_the_workstation_sends_once_and_the_hosts_relay(contexts, blob):
    path, sha = blob
    fanout = Fanout()
    try:
        placement = place_everywhere(contexts, path, sha, fanout)
    finally:
        fanout.close()
    assert placement.errors == {}
    assert fanout.workstation_sends[sha] == 1
    assert fanout.relayed[sha] == len(contexts) - 1
    fed_by = {host: source for (digest, host), source in fanout.fed_by.items() if digest == sha}
    assert sorted(fed_by.values()).count(WORKSTATION) == 1
    assert fanout.refusals == []
    assert_placed_everywhere(contexts, sha)
    for ctx in contexts:  # each host showed its bytes arriving, up to the whole blob
        assert placement.progress[ctx.host.name][-1] == (BLOB_SIZE, BLOB_SIZE)
    assert processes_mentioning(RELAY_MARK) == []


def test_a_corrupted_hop_is_refused_and_taken_again_from_another_source(contexts, blob):
    path, sha = blob
    first, second = contexts[0], contexts[1]
    fanout = Fanout()
    try:
        assert place_everywhere([first], path, sha, fanout).errors == {}
        copy = local(first, sha)  # damage the first host's copy where its relay reads it
        with copy.open("r+b") as damaged:
            damaged.seek(BLOB_SIZE // 2)
            byte = damaged.read(1)
            damaged.seek(BLOB_SIZE // 2)
            damaged.write(bytes([byte[0] ^ 0xFF]))
        assert place_everywhere([second], path, sha, fanout).errors == {}
    finally:
        fanout.close()
    assert [(h, s) for h, s, _ in fanout.refusals] == [(second.host.name, first.host.name)]
    assert "sha256" in fanout.refusals[0][2]
    assert fanout.fed_by[(sha, second.host.name)] == WORKSTATION
    assert_placed_everywhere([second], sha)
    assert processes_mentioning(RELAY_MARK) == []


def test_a_relay_killed_mid_stream_its_downstream_falls_back_and_all_converge(contexts, blob):
    path, sha = blob
    fanout = Fanout()
    killed: dict[str, int] = {}

    def kill_a_relay_mid_stream() -> None:
        """Once a host receives from another host and holds 1 MiB, kill that relay by pid."""
        by_name = {ctx.host.name: ctx for ctx in contexts}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for host, source in fanout.feeding(sha).items():
                placed = local(by_name[host], sha)
                partial = placed.with_name(placed.name + ".partial")
                if source == WORKSTATION or not partial.exists():
                    continue
                if partial.stat().st_size >= 1 << 20:
                    server = fanout.servers(sha)[source]
                    os.kill(server.pid, signal.SIGKILL)
                    killed[host] = server.pid
                    killed["source"] = source
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_relay_mid_stream)
    killer.start()
    try:
        placement = place_everywhere(contexts, path, sha, fanout)
    finally:
        killer.join()
        fanout.close()
    assert killed, "no host received from another host: the relay path was not taken"
    victim = next(host for host in killed if host != "source")
    assert placement.errors == {}
    assert (victim, killed["source"]) in [(h, s) for h, s, _ in fanout.refusals]
    assert fanout.fed_by[(sha, victim)] != killed["source"]
    assert_placed_everywhere(contexts, sha)
    assert processes_mentioning(RELAY_MARK) == []


def test_a_copy_removed_on_its_host_is_still_relayed(contexts, blob):
    """An engine archive is deleted once unpacked; its host's relay still holds it open."""
    path, sha = blob
    first, second = contexts[0], contexts[1]
    fanout = Fanout()
    try:
        assert place_everywhere([first], path, sha, fanout).errors == {}
        deadline = time.monotonic() + 30  # the relay holds the copy once it sees it complete
        while time.monotonic() < deadline and not relay_holds(fanout, first, sha):
            time.sleep(0.05)
        local(first, sha).unlink()
        assert place_everywhere([second], path, sha, fanout).errors == {}
    finally:
        fanout.close()
    assert fanout.fed_by[(sha, second.host.name)] == first.host.name
    assert fanout.workstation_sends[sha] == 1
    assert_placed_everywhere([second], sha)


def relay_holds(fanout: Fanout, ctx, sha: str) -> bool:
    """The relay process on ``ctx``'s host has the placed file open."""
    pid = fanout.servers(sha)[ctx.host.name].pid
    target = str(local(ctx, sha))
    try:
        return any(os.readlink(fd) == target for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
