"""Release archives of Ollama, WasmEdge and LlamaEdge, built here and laid out as the real ones.

Neither Ollama nor WasmEdge can be downloaded on the test machines. These builders pack the
stand-in executables (tests/ollama_standin.py, tests/wasmedge_standin.py, both shebanged to this
Python so they find ``xllamacpp``) into archives with the names, members and checksum files of
the real releases (see shared research, runtimes.md sections 1.2 and 3.1), and serve them from a
real HTTP server on loopback laid out as ``https://github.com/<owner>/<repo>/releases/download/
<tag>/<asset>``: the playbook's ``mirror:`` replaces ``https://github.com``.

- Ollama: ``ollama/ollama/releases/download/v<V>/ollama-linux-<arch>.tar.zst`` (``.tgz`` before
  0.14), members ``bin/ollama`` and ``lib/ollama/...`` owned by 0:0, and ``sha256sum.txt`` with
  ``<hex>  ./<asset>`` lines.
- WasmEdge: ``WasmEdge/WasmEdge/releases/download/<V>/WasmEdge-<V>-ubuntu20.04_x86_64.tar.gz``
  (``bin/ lib/ include/`` at the top from 0.15, under ``WasmEdge-<V>-Linux/`` before), the plugin
  ``WasmEdge-plugin-wasi_nn-ggml-<V>-ubuntu20.04_x86_64.tar.gz`` holding one
  ``libwasmedgePluginWasiNN.so``, and a ``SHA256SUM``.
- LlamaEdge: ``LlamaEdge/LlamaEdge/releases/download/<V>/llama-api-server.wasm`` and ``SHA256SUM``.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.hf_standin import FileServer

TESTS = Path(__file__).resolve().parent
OLLAMA_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("-")[0].split(".") if p.isdigit())


def standin_executable(source: str, **constants: object) -> bytes:
    """A stand-in module as an executable for this Python, its constants set."""
    text = (TESTS / source).read_text()
    for name, value in constants.items():
        marker = next(line for line in text.splitlines() if line.startswith(f"{name}"))
        text = text.replace(marker, f"{name} = {json.dumps(value)}", 1)
    return f"#!{sys.executable}\n{text}".encode()


def tar_bytes(members: dict[str, bytes | str], compression: str) -> bytes:
    """A tar archive of ``members`` (path -> content, or "->target" for a symlink), owned by
    0:0, compressed with "gz" or "zst"."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        folders: set[str] = set()
        for path in members:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folders.add("/".join(parts[:i]))
        for folder in sorted(folders):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, content in members.items():
            info = tarfile.TarInfo(path)
            if isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
                continue
            data = content.encode() if isinstance(content, str) else content
            info.size = len(data)
            info.mode = 0o755 if "/bin/" in f"/{path}" else 0o644
            tar.addfile(info, io.BytesIO(data))
    if compression == "zst":
        return subprocess.run(
            ["zstd", "-q", "-c"], input=raw.getvalue(), capture_output=True, check=True
        ).stdout
    import gzip

    return gzip.compress(raw.getvalue(), mtime=0)


def sha256sum_listing(files: dict[str, bytes], prefix: str = "") -> bytes:
    return "".join(
        f"{hashlib.sha256(data).hexdigest()}  {prefix}{name}\n"
        for name, data in sorted(files.items())
    ).encode()


def wasm_module(program: str, version: str) -> bytes:
    """A valid (empty) wasm module whose custom section names the stand-in program to run."""
    name = b"llamaedge-standin"
    payload = json.dumps({"program": program, "version": version}).encode()
    body = _leb(len(name)) + name + payload
    return b"\0asm\x01\0\0\0" + b"\x00" + _leb(len(body)) + body


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class ReleaseMirror(FileServer):
    """A loopback HTTP server laid out as github.com's release downloads."""

    def __init__(self) -> None:
        super().__init__()

    def add_ollama(
        self, version: str, library: dict[str, str] | None = None, arches=("amd64", "arm64")
    ) -> dict[str, str]:
        """Ollama's Linux archives for ``version`` and their sha256sum.txt; returns name -> sha."""
        suffix = "tar.zst" if _version_tuple(version) >= (0, 14) else "tgz"
        base = f"/ollama/ollama/releases/download/v{version}"
        assets = {}
        for arch in arches:
            members = {
                "bin/ollama": standin_executable(
                    "ollama_standin.py", VERSION=version, LIBRARY=library or {}
                ),
                "lib/ollama/standin_engine.py": (TESTS / "standin_engine.py").read_bytes(),
                "lib/ollama/libggml-base.so": f"stand-in library for {arch}\n".encode(),
            }
            name = f"ollama-linux-{arch}.{suffix}"
            assets[name] = tar_bytes(members, "zst" if suffix == "tar.zst" else "gz")
        for name, data in assets.items():
            self.add(f"{base}/{name}", data)
        self.add(f"{base}/sha256sum.txt", sha256sum_listing(assets, "./"))
        return {name: hashlib.sha256(data).hexdigest() for name, data in assets.items()}

    def add_wasmedge(
        self, version: str, plugin_version: str | None = None, platform: str = "ubuntu20.04_x86_64"
    ) -> dict[str, str]:
        """WasmEdge's runtime and wasi_nn-ggml plugin archives (the plugin built for
        ``plugin_version``, by default the same) and a SHA256SUM; returns name -> sha."""
        top = "" if _version_tuple(version) >= (0, 15) else f"WasmEdge-{version}-Linux/"
        members: dict[str, bytes | str] = {
            f"{top}bin/wasmedge": standin_executable("wasmedge_standin.py", VERSION=version),
            f"{top}lib/libwasmedge.so.0.1.0": b"stand-in library\n",
            f"{top}lib/libwasmedge.so.0": "->libwasmedge.so.0.1.0",
            f"{top}lib/libwasmedge.so": "->libwasmedge.so.0",
            f"{top}lib/standin_engine.py": (TESTS / "standin_engine.py").read_bytes(),
            f"{top}include/wasmedge/wasmedge.h": b"/* stand-in header */\n",
        }
        plugin = f"WasmEdge plugin API version {plugin_version or version}\n".encode()
        assets = {
            f"WasmEdge-{version}-{platform}.tar.gz": tar_bytes(members, "gz"),
            f"WasmEdge-plugin-wasi_nn-ggml-{version}-{platform}.tar.gz": tar_bytes(
                {"libwasmedgePluginWasiNN.so": plugin}, "gz"
            ),
        }
        base = f"/WasmEdge/WasmEdge/releases/download/{version}"
        for name, data in assets.items():
            self.add(f"{base}/{name}", data)
        self.add(f"{base}/SHA256SUM", sha256sum_listing(assets))
        return {name: hashlib.sha256(data).hexdigest() for name, data in assets.items()}

    def add_llamaedge(self, version: str) -> str:
        """LlamaEdge's llama-api-server.wasm (the stand-in module) and SHA256SUM; returns its sha."""
        wasm = wasm_module("llama-api-server", version)
        base = f"/LlamaEdge/LlamaEdge/releases/download/{version}"
        self.add(f"{base}/llama-api-server.wasm", wasm)
        self.add(f"{base}/SHA256SUM", sha256sum_listing({"llama-api-server.wasm": wasm}))
        return hashlib.sha256(wasm).hexdigest()
