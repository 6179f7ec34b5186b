"""Benchmark: the proxy's CPU instructions per request, counted by valgrind's callgrind.

Not a test. On a shared VM the proxy's CPU time per request drifts by half from one minute to the
next, so two versions of the proxy cannot be told apart by timing when they differ by 5%. An
instruction count does not drift: run this on each version and compare. It counts user space only
(Python, uvloop, httptools); the kernel's share (the same four system calls a request either way)
is not in it. Needs valgrind and nginx (``apt-get install valgrind nginx``).

The proxy runs under callgrind in front of the static nginx upstream of ``bench/proxy.py``.
``--connections`` clients send ``--warmup`` requests, the counters are zeroed, they send
``--requests`` more, and the counters are dumped: the count covers those requests alone, with
everything the proxy does for them (access log, metrics and health checks included). Five runs
of one version agreed within 0.3%; the proxy before its callback path counted 156k, after it 149k,
139k after the cuts that followed (one %-format per access line, and others).

    python bench/proxy_instructions.py [--requests 3200] [--connections 16] [--no-access-log]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.proxy import (  # noqa: E402  (the repo is on the path)
    COMPLETION,
    NGINX_UPSTREAM,
    REQUEST,
    Processes,
    free_port,
    missing,
)

POST = (
    "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(REQUEST)}\r\n\r\n{REQUEST}"
).encode()


async def send(port: int, requests: int, connections: int) -> None:
    """``requests`` POSTs over ``connections`` keep-alive connections, one at a time on each."""

    async def one_connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(POST)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(one_connection(requests // connections) for _ in range(connections)))


def instructions(dump_dir: Path, pid: int) -> int:
    """The instructions of callgrind's last dump for ``pid`` (the one after zeroing)."""
    dumps = sorted(dump_dir.glob(f"callgrind.{pid}.*"), key=lambda path: path.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {dumps[-1]}")


async def measure(args: argparse.Namespace, tmp: Path, processes: Processes) -> int:
    upstream_port, proxy_port = free_port(), free_port()
    conf = tmp / "nginx-upstream.conf"
    conf.write_text(
        NGINX_UPSTREAM.replace("@DIR@", str(tmp))
        .replace("@PORT@", str(upstream_port))
        .replace("@BODY@", COMPLETION)
    )
    processes.start(["nginx", "-c", str(conf), "-p", str(tmp)], tmp / "nginx.log")
    routes = tmp / "routes.yml"
    routes.write_text(
        f"models:\n  m:\n    backends: [{{url: 'http://127.0.0.1:{upstream_port}', "
        "runtime: openai}]\n"
    )
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.%p"]
    argv += [sys.executable, "-m", "proxy", "--routes", str(routes), "--port", str(proxy_port)]
    if args.no_access_log:
        argv.append("--no-access-log")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proxy = processes.start(argv, tmp / "proxy.log", env=env)
    deadline = time.monotonic() + 120  # Python starts ~50x slower under valgrind
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{proxy_port}/health")).is_success:
                    break
            except httpx.TransportError:
                pass
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the proxy did not start: see {tmp / 'proxy.log'}")
            await asyncio.sleep(0.5)
    await send(proxy_port, args.warmup, args.connections)
    subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True)
    await send(proxy_port, args.requests, args.connections)
    subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
    return instructions(tmp, proxy.pid) // args.requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3200)
    parser.add_argument("--warmup", type=int, default=800)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args()
    if missing(("valgrind", "callgrind_control", "nginx"), "valgrind nginx"):
        return 2
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="proxy-instructions-") as tmp:
        try:
            per_request = asyncio.run(measure(args, Path(tmp), processes))
        finally:
            processes.stop_all()
    logging = "without" if args.no_access_log else "with"
    print(
        f"proxy: {per_request} instructions per request ({logging} access log;"
        f" {args.requests} requests over {args.connections} connections, under callgrind)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
