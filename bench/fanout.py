"""Benchmark: one blob to 1, 4 and 16 hosts, through the relay and by today's star pushes.

Not a test. Needs root, openssh-server, sudo and iproute2 (ip, tc): it starts a switched SSH bed
(tests/sshbed.py: a network namespace per host with its own sshd, on a bridge, every link and
the workstation's uplink limited to ``--rate`` Mbit/s each way by ``tc tbf``) for each host
count, places a random blob of ``--size`` bytes on every host with ``place_blob`` (hosts in
parallel, as apply runs them), once with the run's fan-out (toolkit/relay) and once without
(the workstation pushes every copy over SFTP), and prints wall seconds, the ratio to one host,
and how many copies left the workstation.

    python bench/fanout.py [--size 1G] [--hosts 1,4,16] [--rate 1000] [--ways relay,star]

On a small machine the CPU (sshd's crypto, hashing on every host) can bound the figures before
the links do; lower ``--rate`` then, so that the links are what is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fanout_bed import host_contexts, make_blob, place_everywhere, remove_blob  # noqa: E402
from tests.sshbed import SSHBed  # noqa: E402
from toolkit.relay.fanout import Fanout  # noqa: E402


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def run(count: int, rate: float, blob: Path, sha: str, ways: list[str]) -> dict[str, tuple]:
    """{way: (seconds, copies sent by the workstation, errors)} for ``count`` hosts."""
    found = {}
    with SSHBed(count=count, switched=True, rate_mbit=rate) as bed:
        contexts = host_contexts(bed)
        try:
            for way in ways:
                fanout = Fanout() if way == "relay" else None
                try:
                    placement = place_everywhere(contexts, blob, sha, fanout)
                finally:
                    if fanout is not None:
                        fanout.close()
                sent = fanout.workstation_sends[sha] if fanout else count
                found[way] = (placement.seconds, sent, placement.errors)
                remove_blob(contexts, sha)
        finally:
            for ctx in contexts:
                ctx.conn.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G", help="blob size (1G, 256M, ...)")
    parser.add_argument("--hosts", default="1,4,16", help="host counts, comma-separated")
    parser.add_argument("--rate", type=float, default=1000, help="Mbit/s of every link")
    parser.add_argument("--ways", default="relay,star", help="relay, star (today's pushes)")
    args = parser.parse_args()
    size = parse_size(args.size)
    counts = [int(c) for c in args.hosts.split(",")]
    ways = args.ways.split(",")
    ideal = size * 8 / (args.rate * 1e6)
    print(f"blob {size / 2**20:.0f} MiB, links {args.rate:g} Mbit/s each way "
          f"(one transfer at link speed: {ideal:.1f} s)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="toolkit-fanout-") as tmp:
        blob = Path(tmp) / "blob.gguf"
        sha = make_blob(blob, size)
        base: dict[str, float] = {}
        print(f"{'hosts':>5} {'way':>6} {'seconds':>8} {'x 1 host':>9} {'sent':>5}  errors")
        for count in counts:
            for way, (seconds, sent, errors) in run(count, args.rate, blob, sha, ways).items():
                base.setdefault(way, seconds)
                ratio = seconds / base[way]
                print(f"{count:>5} {way:>6} {seconds:>8.1f} {ratio:>9.2f} {sent:>5}  "
                      f"{'; '.join(f'{h}: {e}' for h, e in errors.items()) or '-'}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
