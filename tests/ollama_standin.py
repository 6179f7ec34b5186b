#!/usr/bin/env python3
"""A stand-in for the ``ollama`` executable: its CLI entry points and the HTTP API toolkit uses.

Ollama cannot be downloaded on the test machines, so tests/runtime_releases.py packs this file as
``bin/ollama`` into an archive laid out like Ollama's Linux release, and toolkit installs it
through its real ``release`` path. It is a stand-in, not Ollama: it speaks the documented API
(docs/api.md) that toolkit relies on, and serves real tokens by handing a model's GGUF blob to
the real llama.cpp engine (the ``xllamacpp`` wheel, loaded on the first request, as Ollama loads
a model on demand).

- ``ollama -v`` / ``--version``: ``ollama version is X``;
- ``ollama serve``: listens on ``OLLAMA_HOST`` (default 127.0.0.1:11434), stores blobs as
  ``$OLLAMA_MODELS/blobs/sha256-<hex>`` and manifests under
  ``$OLLAMA_MODELS/manifests/registry.ollama.ai/library/<name>/<tag>``;
- ``/``, ``/api/version``, ``/api/tags``, ``/api/show``, ``/api/ps``, NDJSON ``/api/pull`` and
  ``/api/create``, ``HEAD``/``POST /api/blobs/sha256:<hex>`` (400 on a digest mismatch, 200
  without reading the body when the blob is there), ``DELETE /api/delete`` with a JSON body,
  ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Pulls come from ``LIBRARY`` (baked in when the archive is built): model name -> a GGUF path on
this machine, or ``"fail-midway"`` (the pull stops with an ``{"error": ...}`` line after some
progress, as a dropped download does). A name not in it fails as Ollama does for a model the
registry does not have. Standard library only, plus ``xllamacpp`` for answers.

Knob for tests: ``OLLAMA_STANDIN_PULL_GATE=<file>`` in ``serve``'s environment holds every pull
halfway (after its 0 %, 30 % and 50 % progress lines) until that file exists, so a test can
see progress arrive while the pull is still running; a gate not opened in 300 s ends the pull
with an ``{"error": ...}`` line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "0.0.0"  # replaced when the release archive is built
LIBRARY: dict[str, str] = {}  # replaced when the release archive is built
REGISTRY = "registry.ollama.ai"
MODEL_MEDIA = "application/vnd.ollama.image.model"
TEMPLATE_MEDIA = "application/vnd.ollama.image.template"
SYSTEM_MEDIA = "application/vnd.ollama.image.system"
PARAMS_MEDIA = "application/vnd.ollama.image.params"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class Store:
    """Blobs and manifests under OLLAMA_MODELS, laid out as Ollama lays them out."""

    def __init__(self, root: Path):
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "manifests" / REGISTRY / "library").mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def manifest_path(self, name: str) -> Path:
        model, tag = full_name(name).split(":", 1)
        return self.root / "manifests" / REGISTRY / "library" / model / tag

    def manifest(self, name: str) -> dict | None:
        try:
            return json.loads(self.manifest_path(name).read_text())
        except (OSError, ValueError):
            return None

    def models(self) -> list[tuple[str, Path]]:
        base = self.root / "manifests" / REGISTRY / "library"
        return sorted(
            (f"{m.name}:{t.name}", t) for m in base.iterdir() if m.is_dir() for t in m.iterdir()
        )

    def put_bytes(self, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob(digest)
        if not path.exists():
            path.write_bytes(data)
        return {"digest": digest, "size": len(data)}

    def write_manifest(self, name: str, layers: list[dict]) -> None:
        config = self.put_bytes(json.dumps({"model_format": "gguf"}).encode())
        body = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
            "layers": layers,
        }
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body))

    def model_blob(self, name: str) -> Path | None:
        manifest = self.manifest(name)
        for layer in (manifest or {}).get("layers", []):
            if layer["mediaType"] == MODEL_MEDIA:
                return self.blob(layer["digest"])
        return None


class Engines:
    """One llama.cpp engine per model blob, started on its first request (Ollama loads models on
    demand); names that share a blob share its engine."""

    def __init__(self):
        self.lock = threading.Lock()
        self.urls: dict[Path, str] = {}

    def url_for(self, name: str, blob: Path) -> str:
        with self.lock:
            if blob not in self.urls:
                from standin_engine import start_engine

                self.urls[blob] = start_engine(str(blob), name)
            return self.urls[blob]


def make_handler(store: Store, engines: Engines):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "ollama-standin"

        def log_message(self, fmt, *args) -> None:
            sys.stderr.write(
                f"[GIN] {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n"
            )

        # -- replies ------------------------------------------------------------------
        def reply(self, status: int, body: object, close: bool = False) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            kind = "application/json" if not isinstance(body, bytes) else "text/plain"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def start_stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def line(self, obj: dict) -> None:
            data = json.dumps(obj).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def end_stream(self) -> None:
            self.wfile.write(b"0\r\n\r\n")

        def body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw or b"{}")
            except ValueError:
                return {}

        # -- routes -------------------------------------------------------------------
        def do_HEAD(self) -> None:
            if self.path in ("/", "/api/version"):
                return self.do_GET()
            match = re.fullmatch(r"/api/blobs/(sha256:[0-9a-f]{64})", self.path)
            if match:
                return self.reply(200 if store.blob(match[1]).exists() else 404, b"")
            self.reply(404, b"404 page not found")

        def do_GET(self) -> None:
            if self.path == "/":
                return self.reply(200, b"Ollama is running")
            if self.path == "/api/version":
                return self.reply(200, {"version": VERSION})
            if self.path == "/api/tags":
                return self.reply(200, {"models": [self.describe(n, p) for n, p in store.models()]})
            if self.path == "/api/ps":
                loaded = [str(blob.name) for blob in engines.urls]
                return self.reply(200, {"models": [{"name": n} for n in loaded]})
            if self.path == "/v1/models":
                data = [
                    {"id": n, "object": "model", "created": int(p.stat().st_mtime),
                     "owned_by": "library"}
                    for n, p in store.models()
                ]  # fmt: skip
                return self.reply(200, {"object": "list", "data": data})
            self.reply(404, b"404 page not found")

        def do_DELETE(self) -> None:
            if self.path != "/api/delete":
                return self.reply(404, b"404 page not found")
            name = self.body().get("model") or ""
            path = store.manifest_path(name) if name else None
            if path is None or not path.exists():
                return self.reply(404, {"error": f"model '{name}' not found"})
            path.unlink()
            self.reply(200, b"")

        def do_POST(self) -> None:
            match = re.fullmatch(r"/api/blobs/(sha256:[0-9a-f]{64})", self.path)
            if match:
                return self.post_blob(match[1])
            routes = {
                "/api/pull": self.pull,
                "/api/create": self.create,
                "/api/show": self.show,
                "/v1/chat/completions": self.openai,
                "/v1/completions": self.openai,
            }
            if self.path not in routes:
                return self.reply(404, b"404 page not found")
            routes[self.path]()

        def describe(self, name: str, path: Path) -> dict:
            manifest = json.loads(path.read_text())
            size = sum(layer["size"] for layer in manifest["layers"])
            return {
                "name": name,
                "model": name,
                "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime)),
                "size": size,
                "digest": hashlib.sha256(path.read_bytes()).hexdigest(),
                "details": {"format": "gguf", "family": "", "parameter_size": "",
                            "quantization_level": ""},
            }  # fmt: skip

        def post_blob(self, digest: str) -> None:
            target = store.blob(digest)
            if target.exists():  # as Ollama: answered before the body is read
                return self.reply(200, b"", close=True)
            length = int(self.headers.get("Content-Length") or -1)
            if length < 0:
                return self.reply(400, {"error": "missing Content-Length"}, close=True)
            sha = hashlib.sha256()
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                left = length
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    sha.update(chunk)
                    tmp.write(chunk)
                    left -= len(chunk)
            got = "sha256:" + sha.hexdigest()
            if got != digest:
                os.unlink(tmp.name)
                return self.reply(
                    400, {"error": f'digest mismatch, expected "{digest}", got "{got}"'}
                )
            os.replace(tmp.name, target)
            self.reply(201, b"")

        def pull(self) -> None:
            body = self.body()
            name = body.get("model") or body.get("name") or ""
            self.start_stream()
            self.line({"status": "pulling manifest"})
            source = LIBRARY.get(full_name(name)) or LIBRARY.get(name)
            if not NAME.match(name) or source is None:
                self.line({"error": "pull model manifest: file does not exist"})
                return self.end_stream()
            if source == "fail-midway":
                digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
                self.line({"status": f"pulling {digest[7:19]}", "digest": digest,
                           "total": 1000, "completed": 400})  # fmt: skip
                self.line({"error": "max retries exceeded: unexpected EOF"})
                return self.end_stream()
            path = Path(source)
            sha = hashlib.sha256()
            size = path.stat().st_size
            done = 0
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(8 << 20), b""):
                    sha.update(chunk)
                    done += len(chunk)
            digest = "sha256:" + sha.hexdigest()
            gate = os.environ.get("OLLAMA_STANDIN_PULL_GATE")
            for completed in (0, size * 3 // 10, size // 2, size):
                if completed == size and gate and not wait_for(Path(gate), 300):
                    self.line({"error": f"stand-in: pull gate {gate} not opened in 300 s"})
                    return self.end_stream()
                self.line({"status": f"pulling {digest[7:19]}", "digest": digest,
                           "total": size, "completed": completed})  # fmt: skip
            blob = store.blob(digest)
            if not blob.exists():
                shutil.copyfile(path, blob)
            self.line({"status": "verifying sha256 digest"})
            self.line({"status": "writing manifest"})
            store.write_manifest(name, [{"mediaType": MODEL_MEDIA, "digest": digest, "size": size}])
            self.line({"status": "success"})
            self.end_stream()

        def create(self) -> None:
            body = self.body()
            name = body.get("model") or ""
            files = body.get("files") or {}
            if not NAME.match(name):
                return self.reply(400, {"error": "invalid model name"})
            if not files:
                return self.reply(400, {"error": "neither 'from' or 'files' was specified"})
            layers = []
            for digest in files.values():
                if not store.blob(digest).exists():
                    return self.reply(400, {"error": f"blob {digest} not found"})
                size = store.blob(digest).stat().st_size
                layers.append({"mediaType": MODEL_MEDIA, "digest": digest, "size": size})
            self.start_stream()
            self.line({"status": "parsing GGUF"})
            for layer in layers:
                self.line({"status": f"using existing layer {layer['digest']}"})
            for key, media in (("template", TEMPLATE_MEDIA), ("system", SYSTEM_MEDIA)):
                if body.get(key):
                    layers.append({"mediaType": media, **store.put_bytes(body[key].encode())})
                    self.line({"status": f"creating {key} layer"})
            if body.get("parameters"):
                data = json.dumps(body["parameters"]).encode()
                layers.append({"mediaType": PARAMS_MEDIA, **store.put_bytes(data)})
            self.line({"status": "writing manifest"})
            store.write_manifest(name, layers)
            self.line({"status": "success"})
            self.end_stream()

        def show(self) -> None:
            name = self.body().get("model") or ""
            manifest = store.manifest(name)
            if manifest is None:
                return self.reply(404, {"error": f"model '{name}' not found"})
            out: dict = {"details": {"format": "gguf"}, "capabilities": ["completion"]}
            for layer in manifest["layers"]:
                if layer["mediaType"] == TEMPLATE_MEDIA:
                    out["template"] = store.blob(layer["digest"]).read_text()
                elif layer["mediaType"] == SYSTEM_MEDIA:
                    out["system"] = store.blob(layer["digest"]).read_text()
                elif layer["mediaType"] == PARAMS_MEDIA:
                    params = json.loads(store.blob(layer["digest"]).read_text())
                    out["parameters"] = "\n".join(f"{k} {v}" for k, v in params.items())
            self.reply(200, out)

        def openai(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                request = json.loads(raw)
            except ValueError:
                return self.reply(
                    400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}}
                )
            name = full_name(str(request.get("model") or ""))
            blob = store.model_blob(name)
            if blob is None:
                message = f'model "{request.get("model")}" not found, try pulling it first'
                return self.reply(404, {"error": {"message": message, "type": "api_error"}})
            request["model"] = name
            from standin_engine import forward

            forward(self, engines.url_for(name, blob), request)

    return Handler


def wait_for(path: Path, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)
    return True


def listen_address() -> tuple[str, int]:
    value = os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434"
    value = re.sub(r"^[a-z]+://", "", value).split("/", 1)[0]
    host, _, port = value.rpartition(":") if ":" in value else (value, "", "11434")
    return host or "127.0.0.1", int(port or 11434)


def serve() -> None:
    # standin_engine.py ships beside this file's install, in lib/ollama (as Ollama's own libraries)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib" / "ollama"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    models = os.environ.get("OLLAMA_MODELS") or os.path.expanduser("~/.ollama/models")
    store = Store(Path(models))
    host, port = listen_address()
    server = ThreadingHTTPServer((host, port), make_handler(store, Engines()))
    server.daemon_threads = True
    print(f"Listening on {host}:{port} (version {VERSION}, stand-in)", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: stop(0))
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    stop(0)


def stop(code: int) -> None:
    from standin_engine import stop_engines

    stop_engines()
    os._exit(code)


def main(argv: list[str]) -> int:
    if argv[:1] in (["-v"], ["--version"], ["version"]):
        print(f"ollama version is {VERSION}")
        return 0
    if argv[:1] == ["serve"]:
        serve()
        return 0
    print(f'Error: unknown command {" ".join(argv)!r} for "ollama" (stand-in)', file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
