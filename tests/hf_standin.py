"""A stand-in for the Hugging Face Hub, and a plain file server, for tests.

These are real HTTP servers (stdlib ``http.server``, one thread each, 127.0.0.1, random port) that
the real ``huggingface_hub`` and ``httpx`` clients talk to. The stand-in speaks the part of the Hub
that ``hf_hub_download`` uses for one file, shaped like the Hub's answer for an LFS file:

- ``HEAD|GET /{repo_id}/resolve/{revision}/{filename}`` on the "Hub": ``302`` to the "CDN" (another
  origin, so the client drops its Authorization header, as with cdn-lfs.hf.co), carrying
  ``X-Repo-Commit``, ``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size``. Unknown repo (or a
  private repo without the right Bearer token): ``401`` with ``X-Error-Code: RepoNotFound``;
  unknown revision: ``404 RevisionNotFound``; unknown file: ``404 EntryNotFound``.
- ``HEAD|GET /blobs/<sha256>`` on the "CDN" (a ``FileServer``): the bytes, with ``ETag``,
  ``Accept-Ranges`` and ``Range`` support. A ``LinkedFile`` redirects to another server instead
  (bench/download.py points it at nginx).

``FileServer`` can also cut responses short, to test resuming downloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class SeenRequest:
    """One request as a server received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    """Tracks open connections so stopping can end keep-alive handler threads, then join them."""

    daemon_threads = False  # server_close() joins every handler thread
    block_on_close = True

    def __init__(self, owner: _Background, handler: type[BaseHTTPRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)
        self.owner = owner
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def hang_up_all(self) -> None:
        """Close idle keep-alive connections (clients' pools hold them open)."""
        with self._open_lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Background:
    """A server running in a thread; use as a context manager so it is always stopped."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._server = _Server(self, self.handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.hang_up_all()
        self._server.server_close()
        self._thread.join()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def record(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.requests.append(SeenRequest(handler.command, handler.path, headers))


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Tests read ``requests`` instead of a log on stderr."""

    def send_empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _FileHandler(_QuietHandler):
    server: _Server

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        owner: FileServer = self.server.owner  # type: ignore[assignment]
        owner.record(self)
        path = unquote(urlsplit(self.path).path)
        if path in owner.redirects:
            self.send_empty(302, {"Location": owner.redirects[path]})
            return
        data = owner.files.get(path)
        if data is None:
            self.send_empty(404, {})
            return
        start, end = 0, len(data)
        status = 200
        match = _RANGE.fullmatch(self.headers.get("Range", ""))
        if match and not owner.ignore_range:
            start = int(match[1])
            end = int(match[2]) + 1 if match[2] else len(data)
            if start >= len(data):
                self.send_empty(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
        self.send_response(status)
        if owner.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if send_body:
            self._send_body(owner, data[start:end])

    def _send_body(self, owner: FileServer, body: bytes) -> None:
        cut = owner.take_cut()
        if cut is not None:
            # Promise the whole body, send part of it, hang up: what a flaky network does.
            self._write(owner, body[:cut], last=False)
            self.wfile.flush()
            self.close_connection = True
            return
        self._write(owner, body, last=True)

    def _write(self, owner: FileServer, body: bytes, last: bool) -> None:
        if not owner.chunked:
            self.wfile.write(body)
            return
        for start in range(0, len(body), 100_000):
            piece = body[start : start + 100_000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if last:
            self.wfile.write(b"0\r\n\r\n")


class FileServer(_Background):
    """Serves bytes at paths, honours Range (unless told not to), can cut responses short.

    ``chunked`` sends bodies with ``Transfer-Encoding: chunked`` (no length announced);
    ``redirects`` maps a path to the URL a ``302`` sends the client to.
    """

    handler = _FileHandler

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.ignore_range = False
        self.chunked = False
        self._cuts: list[int] = []
        super().__init__()

    def add(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; returns its full URL."""
        self.files[path] = data
        return self.url + quote(path)

    def cut_next(self, *after_bytes: int) -> None:
        """Cut the next GET bodies short: the first after ``after_bytes[0]`` bytes, and so on."""
        with self._lock:
            self._cuts.extend(after_bytes)

    def take_cut(self) -> int | None:
        with self._lock:
            return self._cuts.pop(0) if self._cuts else None

    def gets(self) -> list[SeenRequest]:
        return [request for request in self.requests if request.method == "GET"]


@dataclass(frozen=True)
class LinkedFile:
    """A file whose bytes another server holds (e.g. nginx, for a benchmark): where, and what."""

    url: str
    sha256: str
    size: int


@dataclass
class _Repo:
    # revision -> name -> the bytes, or where they are served
    files: dict[str, dict[str, bytes | LinkedFile]] = field(default_factory=dict)
    token: str | None = None  # a private repo answers only to this Bearer token


class _HubHandler(_QuietHandler):
    server: _Server

    def do_HEAD(self) -> None:
        self._resolve()

    def do_GET(self) -> None:
        self._resolve()

    def _resolve(self) -> None:
        hub: HubStandIn = self.server.owner  # type: ignore[assignment]
        hub.record(self)
        match = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", unquote(urlsplit(self.path).path))
        if match is None:
            self.send_empty(404, {})
            return
        repo_id, revision, filename = match.groups()
        repo = hub.repos.get(repo_id)
        authorization = self.headers.get("Authorization")
        if repo is None or (repo.token and authorization != f"Bearer {repo.token}"):
            self.send_empty(401, {"X-Error-Code": "RepoNotFound"})
            return
        if revision not in repo.files and revision != COMMIT:
            self.send_empty(404, {"X-Error-Code": "RevisionNotFound"})
            return
        data = repo.files.get(revision, repo.files.get("main", {})).get(filename)
        if data is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
            self.send_empty(404, headers)
            return
        if isinstance(data, LinkedFile):
            linked = data
        else:
            sha256 = hub.cdn_store(data)
            linked = LinkedFile(f"{hub.cdn.url}/blobs/{sha256}", sha256, len(data))
        self.send_empty(
            302,
            {
                "Location": linked.url,
                "X-Repo-Commit": COMMIT,
                "X-Linked-Etag": f'"{linked.sha256}"',
                "X-Linked-Size": str(linked.size),
                "ETag": f'W/"{hashlib.sha1(linked.sha256.encode()).hexdigest()}"',
            },
        )


class HubStandIn(_Background):
    """The Hub's resolve endpoint plus its CDN, both real servers; start/stop them together."""

    handler = _HubHandler

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.cdn = FileServer()
        super().__init__()

    def add_file(
        self,
        repo_id: str,
        filename: str,
        data: bytes | LinkedFile,
        *,
        revision: str = "main",
        token: str | None = None,
    ) -> None:
        """Serve ``data`` from the stand-in's CDN, or redirect to where a ``LinkedFile`` lives."""
        repo = self.repos.setdefault(repo_id, _Repo())
        repo.files.setdefault(revision, {})[filename] = data
        repo.token = token or repo.token

    def cdn_store(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        self.cdn.files[f"/blobs/{sha256}"] = data
        return sha256

    def start(self) -> None:
        self.cdn.start()
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.cdn.stop()
