"""Benchmark: toolkit's ``url:`` and ``hf:`` model sources against curl and huggingface_hub.

Not a test. Needs nginx (Debian: ``apt-get install -y nginx``) and curl. It writes a file of
``--size`` random bytes (1 GiB by default) into a scratch directory, serves it from nginx on
127.0.0.1 (sendfile on, one worker), and puts the Hub stand-in of tests/hf_standin.py in front of it
for the ``hf:`` cases: the stand-in answers the resolve API and redirects to nginx, so every
contender reads the same bytes from the same server. Downloads land in the scratch directory (the
same filesystem as a toolkit store there).

Contenders, run in turns (round 1 runs each once, then round 2...), so that a burst of load on a
shared machine hits them alike:

- ``curl -o file``: the yardstick (no hash, no fsync).
- ``curl -o file + fsync``: the same, then the bytes made durable, as toolkit does.
- ``toolkit url:``: ``toolkit.models.sources.fetch`` with the sha256 pinned: download, sha256 and
  fsync in one pass, atomic rename into the store.
- ``hf_hub_download``: huggingface_hub's own download into ``local_dir`` (no sha256, no fsync).
- ``hf_hub_download + sha256``: the same plus a second pass to hash it (what toolkit's hf source did
  before it streamed through the store's writer).
- ``toolkit hf:``: ``fetch`` of an ``hf:`` source, sha256 pinned.

For each: median and best GB/s (10^9 bytes/s), the median of the per-round ratios to ``curl -o
file``, and CPU seconds per GiB used by the downloading process (user + system; nginx not
counted). Target: toolkit url/hf >= 0.90 of curl.

    python bench/download.py [--size-mib 1024] [--rounds 5] [--dir /var/tmp] [--only url,curl]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Before huggingface_hub is imported: no telemetry calls, no Xet, the stand-in as the Hub.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)

from tests.hf_standin import HubStandIn, LinkedFile  # noqa: E402
from toolkit.models.sources import fetch  # noqa: E402
from toolkit.models.store import ModelStore, hash_file  # noqa: E402

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {root}/nginx-tmp;
  proxy_temp_path {root}/nginx-tmp;
  fastcgi_temp_path {root}/nginx-tmp;
  uwsgi_temp_path {root}/nginx-tmp;
  scgi_temp_path {root}/nginx-tmp;
  server {{ listen 127.0.0.1:{port}; root {root}/www; }}
}}
"""
GIB = 1024**3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_file(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; returns their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as file:
        left = size
        while left:
            block = os.urandom(min(left, 16 * 1024 * 1024))
            digest.update(block)
            file.write(block)
            left -= len(block)
    return digest.hexdigest()


class Nginx:
    """nginx in the foreground as our child, serving ``root/www``; stopped by its pid."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        (root / "nginx-tmp").mkdir()
        conf = root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=root, port=self.port))
        self.process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(root)], stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"nginx did not start; see {root / 'nginx-error.log'}")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_dirty_pages() -> None:
    """Start each run with no dirty pages left over from the one before."""
    os.sync()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch directory (default: $TMPDIR)")
    parser.add_argument("--only", default="", help="comma-separated contender keys")
    args = parser.parse_args()
    for tool in ("nginx", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install -y {tool})")

    # A SIGTERM unwinds like Ctrl-C: nginx is stopped and the scratch directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="toolkit-bench-download-", dir=args.dir))
    root.chmod(0o755)  # nginx's workers run as an unprivileged user
    try:
        return run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, args: argparse.Namespace) -> int:
    size = args.size_mib * 1024 * 1024
    (root / "www").mkdir()
    print(f"scratch: {root}; writing {size / GIB:.2f} GiB of random bytes...", flush=True)
    sha256 = make_file(root / "www" / "model.gguf", size)
    out = root / "out"
    out.mkdir()
    nginx = Nginx(root)
    hub = HubStandIn()
    hub.add_file(
        "bench/model-GGUF", "model.gguf", LinkedFile(nginx.url("model.gguf"), sha256, size)
    )
    hub.start()
    os.environ["HF_ENDPOINT"] = hub.url
    try:
        contenders = build_contenders(nginx.url("model.gguf"), sha256, out)
        if args.only:
            keys = args.only.split(",")
            contenders = {key: contenders[key] for key in keys}
        results = measure(contenders, args.rounds, out, size)
    finally:
        hub.stop()
        nginx.stop()
    report(results, {key: label for key, (label, _) in contenders.items()}, size)
    return 0


Contender = tuple[str, Callable[[], None]]


def build_contenders(url: str, sha256: str, out: Path) -> dict[str, Contender]:
    target = out / "model.gguf"
    hf_source = {"hf": "bench/model-GGUF", "file": "model.gguf"}

    def curl() -> None:
        subprocess.run(["curl", "-sSf", "-o", str(target), url], check=True)

    def curl_fsync() -> None:
        curl()
        fsync_path(target)

    def toolkit_url() -> None:
        got = fetch({"url": url}, sha256=sha256, store=ModelStore(out / "store"))
        assert got.sha256 == sha256

    def hf_download() -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download("bench/model-GGUF", "model.gguf", local_dir=out / "hf"))

    def hf_download_hash() -> None:
        digest, _ = hash_file(hf_download())
        assert digest == sha256

    def toolkit_hf() -> None:
        got = fetch(hf_source, sha256=sha256, store=ModelStore(out / "store"))
        assert got.sha256 == sha256

    return {
        "curl": ("curl -o file", curl),
        "curl_fsync": ("curl -o file + fsync", curl_fsync),
        "url": ("toolkit url: (sha256+fsync)", toolkit_url),
        "hf_hub": ("hf_hub_download", hf_download),
        "hf_hub_hash": ("hf_hub_download + sha256", hf_download_hash),
        "hf": ("toolkit hf: (sha256+fsync)", toolkit_hf),
    }


def measure(
    contenders: dict[str, Contender], rounds: int, out: Path, size: int
) -> dict[str, list[tuple[float, float]]]:
    """key -> [(seconds, cpu seconds)] per round."""
    results: dict[str, list[tuple[float, float]]] = {key: [] for key in contenders}
    for round_number in range(1, rounds + 1):
        for key, (label, run_one) in contenders.items():
            clean(out)
            drop_dirty_pages()
            before = cpu_seconds()
            started = time.perf_counter()
            run_one()
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds() - before
            results[key].append((elapsed, cpu))
            print(
                f"round {round_number}/{rounds}  {label:30s} {size / elapsed / 1e9:5.2f} GB/s"
                f"  cpu {cpu / (size / GIB):4.2f} s/GiB",
                flush=True,
            )
    clean(out)
    return results


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def clean(out: Path) -> None:
    for entry in out.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def report(
    results: dict[str, list[tuple[float, float]]], labels: dict[str, str], size: int
) -> None:
    base = results.get("curl")
    print(
        f"\n{size / GIB:.2f} GiB from nginx on 127.0.0.1, {len(next(iter(results.values())))} rounds"
    )
    print(f"{'':30s} {'median':>8s} {'best':>8s} {'vs curl':>8s} {'cpu/GiB':>8s}")
    for key, runs in results.items():
        speeds = [size / seconds / 1e9 for seconds, _ in runs]
        cpu = statistics.median(cpu for _, cpu in runs) / (size / GIB)
        ratio = ""
        if base is not None:
            ratios = [b / s for (b, _), (s, _) in zip(base, runs, strict=True)]
            ratio = f"{statistics.median(ratios):8.2f}"
        print(
            f"{labels[key]:30s} {statistics.median(speeds):6.2f}GB/s {max(speeds):6.2f}GB/s"
            f" {ratio:>8s} {cpu:6.2f} s"
        )


if __name__ == "__main__":
    raise SystemExit(main())
