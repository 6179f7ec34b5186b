"""A lean HTTP/1.1 client for talking to backends: keep-alive pool, streamed bodies.

Why not aiohttp or httpx: measured on a 2-core box, httpx's AsyncClient costs ~2.5 ms a request
and aiohttp's ClientSession ~0.4 ms, more than the whole budget of the proxy. This client is an
asyncio Protocol around httptools' C parser (the one uvicorn uses), which costs a few tens of
microseconds a request. It does only what the proxy needs: GET and POST with a bytes body to a
known backend, responses with Content-Length or chunked bodies, optional TLS.

Flow control: a streamed body buffers at most ``HIGH_WATER`` bytes before the socket stops being
read, so a slow client slows its backend instead of filling memory.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024
KEEPALIVE_SECONDS = 4.0  # below llama.cpp's (cpp-httplib's) 5 s, so we rarely reuse a closed one


class UpstreamError(Exception):
    """The backend could not be reached, or its answer could not be read."""


class ConnectError(UpstreamError):
    """No connection could be opened."""


class Disconnected(UpstreamError):
    """The backend closed the connection before its answer was complete."""


class Response:
    """A response whose headers have arrived; its body is read with ``read`` or ``chunks``."""

    __slots__ = (
        "status",
        "headers",
        "_connection",
        "_chunks",
        "_size",
        "_waiter",
        "_done",
        "_error",
    )

    def __init__(self, connection: _Connection) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}  # lower-cased names
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None

    async def next_chunk(self) -> bytes:
        """The next piece of the body as it arrived; b"" at the end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = self._connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size < HIGH_WATER:
            self._connection.resume()
        return chunk

    def whole(self) -> bytes | None:
        """The body if it has all arrived (the usual for a small answer: it came with the
        headers), else None; then ``read`` waits for it."""
        if not self._done or self._error is not None:
            return None
        parts, self._chunks, self._size = self._chunks, deque(), 0
        return b"".join(parts)

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Give the connection back if the answer was read whole, else close it."""
        self._connection.finish(self._done and self._error is None)

    # called by the connection
    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size >= HIGH_WATER:
            self._connection.pause()
        if self._waiter is not None:
            self._wake()

    def _end(self, error: BaseException | None = None) -> None:
        if error is not None and not self._done:
            self._error = error
        self._done = True
        if self._waiter is not None:
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


Ready = Callable[["Response | None", "UpstreamError | None"], None]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time. ``send`` is told, through its
    ``ready`` callback, when the response's headers are in (with whatever of the body came with
    them), or that the request failed before that."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.ready: Ready | None = None  # told once, when the response's headers are in
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self._paused = False
        self._headers: dict[bytes, bytes] = {}

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"invalid HTTP from the backend: {exc}"))
            self.close()
            return
        ready, response = self.ready, self.response
        if ready is not None and response is not None and response.status:
            self.ready = None
            ready(response, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None and response.status and not response._done:
            headers = response.headers
            if b"content-length" not in headers and b"chunked" not in headers.get(
                b"transfer-encoding", b""
            ):
                response._end()  # a body delimited by the end of the connection
                return
        self._fail(Disconnected("the backend closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None:
            return
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and friends: wait for the real answer
            self._headers = {}
            return
        response.status = status
        response.headers = self._headers
        self._headers = {}

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None and self.response.status:
            self.reusable = self.parser.should_keep_alive()
            self.response._end()

    # used by Pool and Response
    def send(self, head: bytes, body: bytes, ready: Ready) -> None:
        assert self.transport is not None
        self.response = Response(self)
        self.reusable = False
        self.ready = ready
        if len(body) < 65536:  # one buffer: cheaper for the kernel than a writev
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    def finish(self, complete: bool) -> None:
        self.response = None
        self.ready = None
        if complete and self.reusable and not self.closed:
            if self._paused:
                self.resume()
            self.idle_since = time.monotonic()
            self.pool.release(self)
        else:
            self.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: UpstreamError) -> None:
        ready = self.ready
        if ready is not None:
            self.ready = None
            ready(None, error)
        elif self.response is not None:
            self.response._end(error)


class Pool:
    """Keep-alive connections to one backend (scheme://host:port)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        self.host_header = (host if default_port else f"{host}:{self.port}").encode()
        self._idle: deque[_Connection] = deque()
        self._heads: dict[tuple[bytes, str, bytes], bytes] = {}
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None

    async def request(
        self,
        method: bytes,
        path: str,
        body: bytes = b"",
        connect_timeout: float = 5.0,
        content_type: bytes = b"application/json",
    ) -> Response:
        """Send a request and wait for the response's headers (not its body)."""
        connection = self.idle_connection() or await self._connect(connect_timeout)
        headers_in: asyncio.Future[Response] = connection.loop.create_future()

        def ready(response: Response | None, error: UpstreamError | None) -> None:
            if headers_in.done():
                return
            if response is not None:
                headers_in.set_result(response)
            else:
                headers_in.set_exception(error or UpstreamError("no response"))

        connection.send(self.head(method, path, len(body), content_type), body, ready)
        try:
            return await headers_in
        except BaseException:
            connection.finish(False)
            raise

    def head(
        self, method: bytes, path: str, length: int, content_type: bytes = b"application/json"
    ) -> bytes:
        """A request's head: the same for every request but its length, so it is made once."""
        key = (method, path, content_type)
        prefix = self._heads.get(key)
        if prefix is None:
            if len(self._heads) > 256:
                self._heads.clear()
            prefix = self._heads[key] = b"".join(
                (
                    method,
                    b" ",
                    path.encode(),
                    b" HTTP/1.1\r\nHost: ",
                    self.host_header,
                    b"\r\nContent-Type: ",
                    content_type,
                    b"\r\nContent-Length: ",
                )
            )
        return b"%s%d\r\n\r\n" % (prefix, length)

    def release(self, connection: _Connection) -> None:
        self._idle.append(connection)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def idle_connection(self, now: float | None = None) -> _Connection | None:
        """A keep-alive connection that is open and has not idled too long, if there is one.
        ``now``: ``time.monotonic()``, when the caller has read it already."""
        if now is None:
            now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_SECONDS:
                return connection
            connection.close()
        return None

    async def _connect(self, connect_timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self, loop),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self.tls else None,
                ),
                connect_timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectError(f"no connection within {connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectError(exc.strerror or str(exc)) from None
        return connection


class Client:
    """One pool per backend URL."""

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}

    def pool(self, base_url: str) -> Pool:
        pool = self._pools.get(base_url)
        if pool is None:
            pool = self._pools[base_url] = Pool(base_url)
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
