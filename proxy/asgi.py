"""The proxy and ASGI, both ways.

``ProxyApp`` is the whole proxy as an ASGI application, for an ASGI server (``python -m proxy
--server uvicorn``; ``uvicorn proxy.asgi:app`` with ``TOOLKIT_ROUTES`` naming the routes file;
``uvicorn --factory proxy.asgi:create_asgi_app``) or mounted in another ASGI app. The OpenAI paths
run the very code they run under the builtin server (``app.Proxy.handle``, ``upstream.py`` and
its client): an ``Exchange`` offers them what a builtin ``connection.Connection`` offers
(``respond``, ``start_stream``, ``send_chunk``, ``end_stream``, ``run``, ``work``,
``disconnected``) and turns it into ASGI messages. The other paths go to the Starlette app as
they are. A client that goes away (ASGI's ``http.disconnect``) cancels its request's work, which
closes the backend's request, as under the builtin server; so does one that reads nothing of its
answer for the routes file's ``send_timeout`` (then the server closes the connection).

``call_asgi`` goes the other way: the builtin server answering /v1/models, /health and /metrics
with that Starlette app. The request's body has been read already; the app's answer is collected
and written whole, which suits these endpoints: small JSON or text bodies, never a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from .connection import Connection, Request
from .errors import error_body

if TYPE_CHECKING:
    from .app import Proxy
    from .deadline import Clock

logger = logging.getLogger("proxy")

ASGI = {"version": "3.0", "spec_version": "2.3"}
FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))
ROUTES_VARIABLE = "TOOLKIT_ROUTES"
JSON = b"application/json"
SEND_TIMEOUT = 60.0  # seconds a client may read nothing of its answer, when the routes say none


async def call_asgi(app: Any, request: Request, connection: Connection) -> None:
    url = httptools.parse_url(request.url)
    raw_path = url.path or b"/"
    path = raw_path.decode("latin-1")
    scope = {
        "type": "http",
        "asgi": ASGI,
        "http_version": request.http_version,
        "method": request.method.decode("latin-1"),
        "scheme": "http",
        "path": unquote(path) if "%" in path else path,
        "raw_path": raw_path,
        "query_string": url.query or b"",
        "root_path": "",
        "headers": request.headers,
        "client": connection.client,
        "server": connection.server,
    }
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await connection.wait_closed()
        return {"type": "http.disconnect"}

    status = 500
    headers: list[tuple[bytes, bytes]] = []
    parts: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in FRAMING]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                connection.respond(status, headers, b"".join(parts))

    await app(scope, receive, send)


class ProxyApp:
    """The proxy as an ASGI app. Its background work (health checks, the routes watcher,
    deadlines, SIGHUP reloads) runs from ASGI's lifespan startup to its shutdown; mounted in an
    app that does not pass lifespan events on, it starts with the first request instead."""

    def __init__(self, proxy: Proxy) -> None:
        from .app import PROXIED_PATHS

        self.proxy = proxy
        self._proxied = frozenset(path.decode() for path in PROXIED_PATHS)
        self._running: contextlib.AsyncExitStack | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._running is None:
                await self.start()
            path = _route_path(scope)
            if path in self._proxied:
                await self._proxy(scope, receive, send, path)
            else:
                await self.proxy.app(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.proxy.app(scope, receive, send)  # a WebSocket: refused there

    async def start(self) -> None:
        if self._running is not None:
            return
        self._running = contextlib.AsyncExitStack()
        await self._running.enter_async_context(self.proxy.running())

    async def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            await running.aclose()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, scope: dict[str, Any], receive: Any, send: Any, path: str) -> None:
        """One request to an OpenAI path: the key and the body's size are checked from the
        head, before any byte of the body is read (and before a ``100 Continue``)."""
        proxy = self.proxy
        table = proxy.table
        method = scope["method"].encode("latin-1")
        request = Request(
            method, path.encode(), scope["headers"], b"", True, scope.get("http_version", "1.1")
        )
        if method == b"POST" and table.keys.allows(request.header(b"authorization")):
            limit = table.max_body_bytes
            length = request.header(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                request.too_large = _too_large(limit)
            else:
                body = await _read_body(receive, limit)
                if body is None:
                    return  # the client went away before its request was whole
                if isinstance(body, str):
                    request.too_large = body
                else:
                    request.body = body
            if request.too_large:
                request.keep_alive = False  # the rest of the body is not read: close after
        exchange = Exchange(request)
        try:
            proxy.handle(request, exchange)
        except Exception:
            logger.exception("unexpected error answering %s", path)
            exchange.broken()
        watcher = None
        if not exchange.done:
            watcher = asyncio.get_running_loop().create_task(exchange.watch(receive))
        routes = proxy.table.routes
        try:
            timeout = getattr(routes, "send_timeout", SEND_TIMEOUT)
            await exchange.pump(send, proxy.upstream.clock, timeout)
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
            if not exchange.done:  # the server stopped us, or its send failed: stop the work
                exchange.lost()


async def _read_body(receive: Any, limit: int) -> bytes | str | None:
    """The request's body; a message (str) when it is over ``limit`` bytes; None when the
    client went away first."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return _too_large(limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(limit: int) -> str:
    return f"the request body is over {limit} bytes"


def _route_path(scope: dict[str, Any]) -> str:
    """The path below where the app is mounted (ASGI's ``root_path``)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class Exchange:
    """One request to an OpenAI path under an ASGI server, as ``upstream.py`` and
    ``errors.ProxyError`` see a builtin connection. What they answer is queued as ASGI messages
    and sent in order by one sender, ``pump``; ``send_chunk`` returns once its chunk is sent,
    and the server's ``send`` waits while the client reads slower than the backend writes, so a
    slow client slows its backend instead of filling memory."""

    __slots__ = (
        "request",
        "work",
        "responded",
        "disconnected",
        "done",
        "loop",
        "_outbox",
        "_wake",
        "_sent",
    )

    def __init__(self, request: Request) -> None:
        self.request = request
        self.work: Any = None  # what answers the request when it takes a while; see Connection
        self.responded = False
        self.disconnected = False
        self.done = False  # the whole answer is queued (or the request is given up)
        self.loop = asyncio.get_running_loop()
        self._outbox: deque[dict[str, Any]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._sent: asyncio.Future[None] | None = None

    # what upstream.py calls
    def respond(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
        if self.done or self.disconnected:
            return
        head = [*headers, (b"content-length", b"%d" % len(body))]
        if not self.request.keep_alive:
            head.append((b"connection", b"close"))
        self._outbox.append({"type": "http.response.start", "status": status, "headers": head})
        self._outbox.append({"type": "http.response.body", "body": body})
        self.responded = True
        self._finish()

    def start_stream(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        # no length: the server frames the body (chunked for HTTP/1.1)
        start = {"type": "http.response.start", "status": status, "headers": list(headers)}
        self._outbox.append(start)
        self.responded = True
        self._wakeup()

    async def send_chunk(self, data: bytes) -> None:
        if self.done or self.disconnected:
            return
        self._outbox.append({"type": "http.response.body", "body": data, "more_body": True})
        self._wakeup()
        sent = self._sent = self.loop.create_future()
        try:
            await sent
        finally:
            self._sent = None

    def end_stream(self) -> None:
        if not self.done and not self.disconnected:
            self._outbox.append({"type": "http.response.body", "body": b"", "more_body": False})
        self._finish()

    def run(self, work: Coroutine[Any, Any, None]) -> None:
        task = self.work = self.loop.create_task(work)
        task.add_done_callback(self._ran)

    def broken(self) -> None:
        """What answers the request broke (a bug, logged by the caller): answer 500, or end a
        stream that had begun without completing it, so the server closes the connection."""
        if self.done or self.disconnected:
            return
        if self.responded:
            self._finish()
        else:
            body = error_body("internal error in the proxy", "server_error")
            self.respond(500, ((b"content-type", JSON),), body)

    # what ProxyApp calls
    async def pump(self, send: Any, clock: Clock, timeout: float) -> None:
        """Send what is queued, in order, until the answer is whole or the client is gone. A
        client that reads nothing for ``timeout`` seconds is given up: the work is cancelled
        (freeing its backend) and the answer left incomplete, so the server closes the
        connection."""
        outbox = self._outbox
        deadline = clock.deadline(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                while outbox:
                    deadline.reset(timeout)  # covers waiting on the client only
                    await send(outbox.popleft())
                deadline.clear()
                sent = self._sent
                if sent is not None and not sent.done():
                    sent.set_result(None)
                if self.done or self.disconnected:
                    return
                wake = self._wake = self.loop.create_future()
                try:
                    await wake
                finally:
                    self._wake = None
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            deadline.absorb()
            logger.warning(
                "%s: the client read nothing for %g s; closing it",
                self.request.url.decode("latin-1"),
                timeout,
            )
            self.lost()
        finally:
            deadline.close()

    async def watch(self, receive: Any) -> None:
        """Wait for the client to go away while its answer is coming."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.done:
            self.lost()

    def lost(self) -> None:
        """The client went away: cancel the work (it sees ``disconnected`` and closes its
        backend request) and stop sending."""
        self.disconnected = True
        work, self.work = self.work, None
        if work is not None:
            work.cancel()
        self._outbox.clear()
        sent = self._sent
        if sent is not None and not sent.done():
            sent.set_result(None)
        self._wakeup()

    def _finish(self) -> None:
        self.done = True
        self.work = None
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _ran(self, task: asyncio.Task[None]) -> None:
        """The task that answered the request is over: a bug if it raised or left the request
        without an answer."""
        error = None if task.cancelled() else task.exception()
        url = self.request.url.decode("latin-1")
        if error is not None:
            logger.error("unexpected error answering %s", url, exc_info=error)
        elif not self.done and not self.disconnected:
            logger.error("no answer to %s", url)
        self.broken()


def create_asgi_app(
    routes_path: str | Path | None = None, *, access_log: bool = True, require_keys: bool = False
) -> ProxyApp:
    """The proxy for ``routes_path`` (default: the file ``TOOLKIT_ROUTES`` names) as an ASGI app;
    raises RoutesError when the file is wrong. For ``uvicorn --factory``."""
    from .app import create_app
    from .routes import RoutesError

    if routes_path is None:
        routes_path = os.environ.get(ROUTES_VARIABLE)
        if not routes_path:
            raise RoutesError(f"{ROUTES_VARIABLE} is not set: name the routes file there")
    proxy = create_app(routes_path, access_log=access_log, require_keys=require_keys)
    return ProxyApp(proxy)


def __getattr__(name: str) -> Any:
    """``proxy.asgi:app``: made on first use from ``TOOLKIT_ROUTES``, so importing this module
    needs no routes file."""
    if name == "app":
        app = globals()["app"] = create_asgi_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
