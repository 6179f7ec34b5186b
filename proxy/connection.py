"""The proxy's HTTP/1.1 server side: one asyncio Protocol per client connection.

Why not uvicorn: measured on a 2-core box, uvicorn's per-request machinery (an ASGI scope, a
request-cycle object with its event, message dicts, a keep-alive timer per response) and the ASGI
hop into the app cost as much CPU as the rest of the proxy together; with it gone (and the other
cuts of the same change) a small request went from ~85 to ~48 µs of the proxy's CPU. Here a
request is parsed by httptools' C parser (the one uvicorn uses) and handed whole to the proxy,
which answers by writing to the socket: a small response's head and body in one system call.

What a client can count on: keep-alive (HTTP/1.1's default, HTTP/1.0's when asked), pipelined
requests answered in order, ``Expect: 100-continue``, chunked uploads, a body limit (a body over it
is read and dropped, then answered 413; one announced with ``Expect`` is refused before it is
sent), chunked responses for streams with back-pressure (``send_chunk`` waits while the client
reads slower than the backend writes), and a client that goes away cancels its request at once,
so the backend's request is closed with it.

What a hostile client cannot make it spend (each limit has a raw-bytes test in
``tests/test_proxy_hostile.py``): a request head is counted from its first byte to its end, however
it is shaped (an unfinished header, a name without a colon, thousands of empty headers: 431 past
``MAX_HEAD_BYTES``); reading stops while the answers already written wait for the client (pipelined
or not), and a client that reads nothing for ``send_timeout`` is cut off, its backend request with
it; the API key is checked once the head is read, before any byte of the body; a listener takes at
most ``max_connections`` clients and answers 503 to the next ones; a request that cannot be read
is refused only after the answers to the requests before it on the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from http import HTTPStatus
from typing import Any, Protocol

import httptools

from .errors import clip, error_body
from .routes import DEFAULT_MAX_CONNECTIONS, DEFAULT_SEND_TIMEOUT

logger = logging.getLogger("proxy")

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together (and, apart, the trailers)
MAX_URL_BYTES = 8 * 1024  # the request target; nginx's large_client_header_buffers: 8k a line
MAX_PIPELINED = 4  # requests read ahead of the one being answered before reading pauses
HEADER_OVERHEAD = 4  # ": " and CRLF around a header's name and value
SMALL_BODY = 64 * 1024  # the body limit of requests whose body nobody reads (GET /v1/models, ...)
# after a refusal the connection stays half open this long before it closes: closing at once with
# the client's data unread would reset it, and a reset can destroy the refusal before the client
# reads it. Nothing more is read meanwhile (reading a hostile client's stream costs CPU); what
# had been read already is dropped, this much at most
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
JSON = b"application/json"
COPY_BELOW = 64 * 1024  # a head and a body smaller than this are joined into one write


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


STATUS_LINES: dict[int, bytes] = {int(status): _status_line(status) for status in HTTPStatus}


class Request:
    """One request, read whole: the body is here before the proxy sees the request."""

    __slots__ = (
        "method",
        "url",
        "headers",
        "body",
        "keep_alive",
        "http_version",
        "too_large",
        "refused",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        http_version: str,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers  # (lower-cased name, value), in order
        self.body = body
        self.keep_alive = keep_alive
        self.http_version = http_version
        # set when the body was over the limit: it was read and dropped, and the handler must
        # answer 413 with this message (the connection closes after)
        self.too_large: str | None = None
        # set on the stand-in for a request that could not be read: the connection answers this
        # error in its turn, after the requests read before it, and closes
        self.refused: tuple[int, str] | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


Handler = Callable[["Request", "Connection"], None]


class Work(Protocol):
    """What answers a request while the connection waits: a task, or an exchange run by
    callbacks (``upstream.py``); ``cancel`` is called when the client goes away."""

    def cancel(self) -> Any: ...


Admit = Callable[[bytes, "bytes | None"], "int | None"]


class Listener:
    """What every connection of one listening socket shares: the handler, the body limit, and
    the set of open connections (for closing idle ones and for a graceful stop).

    ``admit(path, authorization)``, called once a request's head is read: the body limit for
    that request, or None to refuse it 401 before its body is read (no valid API key). Without
    it every request is admitted with ``body_limit()``. ``max_connections`` and
    ``send_timeout`` may be changed while it serves (a reload)."""

    def __init__(
        self,
        handler: Handler,
        body_limit: Callable[[], int],
        admit: Admit | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
    ) -> None:
        self.handler = handler
        self.body_limit = body_limit
        self.admit: Admit = admit or (lambda path, authorization: body_limit())
        self.max_connections = max_connections
        self.send_timeout = send_timeout
        self.connections: set[Connection] = set()
        self.stopping = False

    def close_idle(self, idle_for: float) -> None:
        """Close connections that have waited ``idle_for`` seconds for a whole request (a
        client sending its request slower than that is cut off too), and drop those whose
        client has read nothing for ``send_timeout`` seconds while an answer waits for it (its
        backend request, if any, is closed with it)."""
        now = time.monotonic()
        cutoff = now - idle_for
        stalled = now - self.send_timeout
        for connection in list(self.connections):
            since = connection.write_paused_since
            if since is not None and since < stalled:
                connection.abort()
            elif not connection.busy and connection.idle_since < cutoff:
                connection.close()

    def stop(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their current answer."""
        self.stopping = True
        for connection in list(self.connections):
            connection.stop()

    def busy(self) -> int:
        return sum(1 for connection in self.connections if connection.busy)


class Connection(asyncio.Protocol):
    """One client connection. Its requests are answered one at a time, in order: the handler
    is called with each and answers it with ``respond`` (a whole body) or ``start_stream`` /
    ``send_chunk`` / ``end_stream``, at once or later. Work that waits runs in a task (``run``),
    or on callbacks that register themselves as ``work`` so that a client going away cancels it.
    """

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.request: Request | None = None  # the one being answered
        self.work: Work | None = None  # what answers it, when that takes a while
        self.responded = False  # whether the current request's answer has begun
        self.disconnected = False
        self.idle_since = time.monotonic()  # since when it waits for a whole request
        self.write_paused_since: float | None = None  # since when the client reads nothing
        self._closing = False  # close once the current answer is complete
        self._queue: deque[Request] = deque()  # read, not yet answered
        self._last_read: Request | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._refusing = False  # a request could not be read: nothing more is read
        self._lingering = False  # refused and answered: what comes is dropped until it closes
        self._dropped = 0  # bytes read and dropped after a refusal
        self._drained: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        # the request being read
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._in_body = False  # its head is read
        self._head_size = 0  # bytes of its head the parser has reported (URL, headers)
        self._unreported = 0  # bytes of its head fed since the parser last reported a part
        self._reported = False  # whether the parser reported a part of a head in this feed
        self._size = 0  # of its body
        self._limit = 0
        self._too_large: str | None = None
        self._keep_alive = True  # False when the request's framing obliges us to close after

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client = _address(transport.get_extra_info("peername"))
        self.server = _address(transport.get_extra_info("sockname"))
        listener = self.listener
        if len(listener.connections) >= listener.max_connections:
            self._over_capacity()
            return
        listener.connections.add(self)
        self._closing = listener.stopping

    def data_received(self, data: bytes) -> None:
        if self._refusing:  # read and dropped, while the refusal is on its way (``_linger``)
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.abort()
            return
        self._reported = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade_asked()
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__  # raised by one of our callbacks below
            if isinstance(refused, _Refused):
                self._refuse(refused.status, str(refused))
            else:
                self._refuse(400, f"invalid HTTP request: {exc}")
            return
        if self._url and not self._in_body:  # a head is unfinished: count what it holds so far
            if self._reported:  # what follows its last reported part, in this feed: < len(data)
                self._unreported = 0
            else:  # a part that never ends (a header value, a name without a colon)
                self._unreported += len(data)
            if self._head_size + self._unreported > MAX_HEAD_BYTES:
                self._refuse(431, "the request headers are too large")
                return
        self._answer_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disconnected = True
        self.listener.connections.discard(self)
        self._queue.clear()
        # the parser holds this connection (its callbacks) and this connection the parser: that
        # cycle, the request being read and its buffers go now, not when the collector runs
        self.parser = None  # type: ignore[assignment]
        self._url = b""
        self._headers = []
        self._body = []
        self._last_read = None
        if self.work is not None:
            self.work.cancel()  # it sees ``disconnected`` and closes its backend request
            self.work = None
        for waiter in (self._drained, self._closed):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        """The client reads slower than we write: read no more of its requests until it has
        caught up (its answers would pile up here), and count the time it takes."""
        self._writing_paused = True
        self.write_paused_since = time.monotonic()
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.write_paused_since = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._update_reading()
        if self.request is None and self._queue:
            self._answer_next()

    # httptools callbacks, for the request being read (its state starts empty, and is emptied
    # again once it is read whole: no on_message_begin, one callback less per request)
    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        self._reported = True
        if len(self._url) > MAX_URL_BYTES:
            raise _Refused(414, "the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + HEADER_OVERHEAD
        self._reported = True
        if self._head_size > MAX_HEAD_BYTES:
            raise _Refused(431, "the request headers are too large")
        if self._in_body:  # a trailer (after a chunked body): counted, never taken as a header
            return
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._head_size = self._unreported = 0
        self._size = 0
        parser = self.parser
        length = expect = authorization = encoding = None
        hosts = encodings = 0
        for name, value in self._headers:
            if name == b"content-length":
                length = value
            elif name == b"expect":
                expect = value
            elif name == b"authorization":
                authorization = value
            elif name == b"host":
                hosts += 1
            elif name == b"transfer-encoding":
                encoding = value
                encodings += 1
        version = parser.get_http_version()
        if version == "1.1" and hosts != 1:
            raise _Refused(400, "an HTTP/1.1 request needs exactly one Host header")
        if encoding is not None:
            if encodings > 1 or encoding.strip().lower() != b"chunked":
                raise _Refused(501, "only 'Transfer-Encoding: chunked' is supported")
            if version == "1.0":  # RFC 9112 6.1: faulty framing; answer, then close
                self._keep_alive = False
        url = self._url
        if url[:1] != b"/":  # absolute-form, as a client sends to a forward proxy
            self._url = url = _origin_form(url)
        limit = self.listener.admit(url.partition(b"?")[0], authorization)
        if limit is None:  # no valid API key: refused before a byte of its body is read
            raise _Refused(401, UNAUTHORIZED)
        self._limit = limit
        continues = expect is not None and expect.lower() == b"100-continue"
        if length is not None and length.isdigit() and int(length) > limit:
            if continues:  # the client waits for our word before sending the body: refuse now
                raise _Refused(413, _too_large(limit))
            self._too_large = _too_large(limit)
        elif continues and not self.busy:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        """Collect the body; one over the limit is read on but dropped, so that the client,
        still sending, can read our 413 (closing with its data unread would reset the
        connection and lose the answer)."""
        if self._too_large is not None:
            return
        self._size += len(body)
        if self._size > self._limit:
            self._too_large = _too_large(self._limit)
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        request = self._last_read = Request(
            parser.get_method(),
            self._url,
            self._headers,
            b"".join(self._body),
            self._keep_alive and parser.should_keep_alive(),
            parser.get_http_version(),
        )
        if self._too_large is not None:
            request.too_large = self._too_large
            request.keep_alive = False
            self._too_large = None
        self._url = b""
        self._headers = []
        self._body = []
        self._size = self._head_size = self._unreported = 0
        self._in_body = False
        self._keep_alive = True
        self._queue.append(request)
        if len(self._queue) >= MAX_PIPELINED and not self._reading_paused:
            self._update_reading()

    # answering
    def respond(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
        """The whole answer to the current request: head and body in one write."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            head = self._head(status, headers)
            head.append(b"content-length: %d\r\n\r\n" % len(body))
            if body and (self.request is None or self.request.method != b"HEAD"):
                head.append(body)
            if len(body) < COPY_BELOW:
                transport.write(b"".join(head))  # one buffer: cheaper for the kernel than writev
            else:
                transport.writelines(head)
        self.responded = True
        self._answered()

    def start_stream(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """The head of an answer whose body follows in chunks (HTTP/1.1 chunked encoding; an
        HTTP/1.0 client gets the body until the connection closes)."""
        if not self._chunked:
            self._closing = True  # the end of the body is the end of the connection
        head = self._head(status, headers)
        head.append(b"transfer-encoding: chunked\r\n\r\n" if self._chunked else b"\r\n")
        self.responded = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(head)

    async def send_chunk(self, data: bytes) -> None:
        """One piece of a streamed body, written as it is; waits while the client lags."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)
        if self._writing_paused:
            self._drained = self.loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    def end_stream(self) -> None:
        if self._chunked and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"0\r\n\r\n")
        self._answered()

    def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Answer the current request with ``work`` in a task, which a client going away
        cancels."""
        task = self.work = self.loop.create_task(work)
        task.add_done_callback(partial(self._ran, self.request))

    def broken(self) -> None:
        """What answers the current request broke (a bug, logged by the caller): answer 500,
        or close if the answer had begun."""
        self._failed(self.request)

    async def wait_closed(self) -> None:
        if self.disconnected:
            return
        if self._closed is None:
            self._closed = self.loop.create_future()
        await self._closed

    def stop(self) -> None:
        """Close when idle; a busy connection closes after its current answer."""
        self._closing = True
        if not self.busy:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping what the client has not read (``close`` would wait for it)."""
        if self.transport is not None:
            self.transport.abort()

    # the request's life
    @property
    def busy(self) -> bool:
        """A request is being answered or waits to be."""
        return self.request is not None or bool(self._queue)

    @property
    def _chunked(self) -> bool:
        return self.request is not None and self.request.http_version == "1.1"

    def _head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
        head = [STATUS_LINES.get(status) or _status_line(status)]
        for name, value in headers:
            head.append(b"%s: %s\r\n" % (name, value))
        request = self.request
        if self._closing or request is None or not request.keep_alive:
            head.append(b"connection: close\r\n")
        elif request.http_version == "1.0":
            head.append(b"connection: keep-alive\r\n")
        return head

    def _answer_next(self) -> None:
        """Hand the next request read to the handler, if none is being answered."""
        if self.request is not None or not self._queue or self.disconnected:
            return
        if self._writing_paused:  # answered once the client has read what it was sent
            return
        request = self.request = self._queue.popleft()
        self.responded = False
        if self._reading_paused:
            self._update_reading()
        if request.refused is not None:
            status, message = request.refused
            self.respond(status, ((b"content-type", JSON),), _refusal_body(status, message))
            return
        try:
            self.listener.handler(request, self)
        except Exception:
            logger.exception("unexpected error answering %s", clip(request.url.decode("latin-1")))
            self._failed(request)

    def _answered(self) -> None:
        """The current request's answer is complete: the connection is free for the next."""
        request, self.request, self.work = self.request, None, None
        if self._closing or request is None or not request.keep_alive:
            self._queue.clear()
            if self._refusing:
                self._linger()
            else:
                self.close()
        elif self._queue:  # pipelined: answered once the code that answered this one is done
            self.loop.call_soon(self._answer_next)
        else:
            self.idle_since = time.monotonic()

    def _ran(self, request: Request | None, task: asyncio.Task[None]) -> None:
        """The task that answered ``request`` is over: a bug if it raised or left the request
        without an answer."""
        error = None if task.cancelled() else task.exception()
        if error is not None:
            url = clip(request.url.decode("latin-1")) if request else ""
            logger.error("unexpected error answering %s", url, exc_info=error)
        elif self.request is request and request is not None and not self.disconnected:
            logger.error("no answer to %s", clip(request.url.decode("latin-1")))
        self._failed(request)

    def _failed(self, request: Request | None) -> None:
        """A bug left ``request`` without a (whole) answer: the client must not wait for ever."""
        if self.request is not request or request is None or self.disconnected:
            return
        self._closing = True
        if self.responded:  # a stream broke off: only closing tells the client
            self._answered()
        else:
            body = error_body("internal error in the proxy", "server_error")
            self.respond(500, ((b"content-type", JSON),), body)

    def _update_reading(self) -> None:
        """Read while the client reads its answers and few requests wait; else pause."""
        transport = self.transport
        if transport is None or self.disconnected or self._lingering:
            return
        if self._refusing or self._writing_paused or len(self._queue) >= MAX_PIPELINED:
            if not self._reading_paused:
                self._reading_paused = True
                transport.pause_reading()
        elif self._reading_paused and len(self._queue) < MAX_PIPELINED // 2:
            self._reading_paused = False
            transport.resume_reading()

    def _refuse(self, status: int, message: str) -> None:
        """A request that cannot be read on: nothing more is read; the requests read before it
        are answered, then this error, then the connection closes."""
        self._refusing = True
        self._update_reading()
        refusal = Request(b"", b"", [], b"", False, "1.1")
        refusal.refused = (status, message)
        self._queue.append(refusal)
        self._answer_next()

    def _upgrade_asked(self) -> None:
        """A request asked to switch protocols (``Upgrade: h2c``, ``websocket``): it is
        answered in HTTP/1.1, as if it had not asked, and the connection closes after it (what
        follows is not HTTP/1.1)."""
        last = self._last_read
        if last is None or (last is not self.request and last not in self._queue):
            self._refuse(501, "protocol upgrades are not supported here")
            return
        last.keep_alive = False
        self._refusing = True
        self._update_reading()
        self._answer_next()

    def _over_capacity(self) -> None:
        """One connection more than ``max_connections``: a 503 and a close, whatever it asks.
        The 503 is written at once, what the client sends is dropped (``_linger``)."""
        self._refusing = True
        self.disconnected = True
        self.parser = None  # type: ignore[assignment]
        message = "the proxy is at its connection limit; retry shortly"
        body = error_body(message, "server_error", "too_many_connections")
        transport = self.transport
        assert transport is not None
        transport.write(
            b"".join(
                (
                    STATUS_LINES[503],
                    b"content-type: application/json\r\nretry-after: 1\r\n",
                    b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body),
                    body,
                )
            )
        )
        self._linger()

    def _linger(self) -> None:
        """Close after a refusal: our side now (the client sees the end of the answer after
        it), the connection ``LINGER_SECONDS`` later, reading nothing more meanwhile."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._lingering = True
        if transport.can_write_eof():
            transport.write_eof()
        if not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        self.loop.call_later(LINGER_SECONDS, self.close)


_TYPE = "invalid_request_error"
UNAUTHORIZED = "Incorrect or missing API key; send 'Authorization: Bearer KEY'."
_CODES = {401: "invalid_api_key", 413: "request_too_large"}


def _refusal_body(status: int, message: str) -> bytes:
    return error_body(message, "server_error" if status >= 500 else _TYPE, _CODES.get(status))


class _Refused(Exception):
    """Raised from a parser callback to stop reading a request that is refused."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _origin_form(url: bytes) -> bytes:
    """``/path?query`` of an absolute URL (``http://host/path?query``), which a server must
    accept as well (RFC 9112, 3.2.2)."""
    try:
        parts = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise _Refused(400, "the request target is not a valid URL") from None
    path = parts.path or b"/"
    if path[:1] != b"/":
        raise _Refused(400, "the request target is not a valid URL")
    return path + b"?" + parts.query if parts.query else path


def _too_large(limit: int) -> str:
    return f"the request body is over {limit} bytes"


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
