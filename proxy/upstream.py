"""Forwarding a request to a backend and relaying its answer, streamed or whole.

The upstream client is our own (``client.py``): a keep-alive pool around httptools' parser.

A request is retried on the next backend only while nothing has been sent to the client:
connection errors, 502/503/504 answers and first-byte timeouts mark the backend down (it rests for
a cool-off) and move on. Other answers, 500 included, are the backend's word on *this* request and
are passed through as they are; but a backend that answers 500 to several requests in a row is
marked down too (``Backend.server_error``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from .access_log import AccessLog, tokens_in
from .backends import Backend, candidates, retry_after
from .client import Client, Disconnected, Pool, Response, UpstreamError
from .connection import Connection
from .deadline import Clock, Deadline
from .errors import ProxyError, error_event
from .metrics import Metrics
from .table import Target

if TYPE_CHECKING:
    from .client import _Connection

logger = logging.getLogger("proxy")

RETRYABLE_STATUS = frozenset((502, 503, 504))
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ProxiedRequest:
    """A parsed client request, ready to send to any backend of its target."""

    __slots__ = ("path", "target", "payload", "raw", "raw_model", "started")

    def __init__(
        self, path: str, target: Target, payload: dict[str, Any], raw: bytes, started: float
    ) -> None:
        self.path = path
        self.target = target
        self.payload = payload
        self.raw = raw  # the body as received, or re-encoded after capability changes
        self.raw_model: str = payload["model"]
        self.started = started

    def body_for(self, backend: Backend) -> bytes:
        """The body with the model name this backend knows the model by."""
        wanted = self.target.backend_models[backend.url]
        if wanted == self.raw_model:
            return self.raw
        self.payload["model"] = wanted
        self.raw, self.raw_model = json.dumps(self.payload).encode(), wanted
        return self.raw


class _Failed(Exception):
    """This backend failed before anything was sent to the client; try the next one."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Upstream:
    def __init__(self, metrics: Metrics, access_log: AccessLog) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.client = Client()
        self.clock = Clock()  # run by the proxy while it serves

    def close(self) -> None:
        self.client.close()

    def forward(self, request: ProxiedRequest, client: Connection) -> None:
        """Send ``request`` to the best backend that answers, and relay the answer to ``client``.

        The usual request needs no task: a keep-alive connection to the best backend is idle,
        and the answer comes whole and good. That runs on callbacks alone (``_Exchange``):
        measured, 5% fewer instructions per proxied request than a task woken twice (156k ->
        148k, the whole process under callgrind). Anything else (a stream, a retry, a new
        connection, a body in several pieces) goes on in a task, ``_forward``."""
        now = time.monotonic()
        choices = candidates(request.target.backends, now)
        if choices:
            pool = self.client.pool(choices[0].url)
            idle = pool.idle_connection(now)
            if idle is not None:
                _Exchange(self, request, choices, pool, idle, client)
                return
        client.run(self._forward(request, client, choices))

    def refused(
        self, client: Connection, error: ProxyError, path: str, model: str, started: float
    ) -> None:
        """Answer ``error`` to a request no backend answered; metrics and the access log."""
        error.respond(client)
        self.log_refused(path, model, error.model or model, error.status, started, error.message)

    def log_refused(
        self, path: str, routed: str, model: str, status: int, started: float, message: str
    ) -> None:
        """``routed``: the model the request was routed to, empty when it was refused before
        routing; ``model``: the model it named."""
        latency = time.perf_counter() - started
        if status != 499:
            self.metrics.observe(routed, "", status, latency, None)
        self.access_log.write(path, model, "", status, latency, None, None, message)

    def log_gone(self, request: ProxiedRequest) -> None:
        """The access log's 499 for a client that went away before its answer."""
        model = request.target.route.name
        self.log_refused(request.path, model, model, 499, request.started, "client disconnected")

    async def _forward(
        self,
        request: ProxiedRequest,
        client: Connection,
        choices: list[Backend],
        first: Response | _Failed | None = None,
    ) -> None:
        """``forward`` in a task; ``first``: how the first backend's try went, when an exchange
        began it."""
        model = request.target.route.name
        try:
            await self._try_each(request, client, choices, first)
        except ProxyError as error:
            self.refused(client, error, request.path, model, request.started)
        except asyncio.CancelledError:
            if not client.disconnected:
                raise
            self.log_gone(request)

    async def _try_each(
        self,
        request: ProxiedRequest,
        client: Connection,
        choices: list[Backend],
        first: Response | _Failed | None,
    ) -> None:
        target = request.target
        model = target.route.name
        if not choices:
            self.metrics.error(model, "", "no_backend")
            raise _no_backend(target, time.monotonic(), "all backends are down")
        deadline = self.clock.deadline(client.work)  # type: ignore[arg-type]
        last_error = ""
        same_backend_retry = True
        index = 0
        try:
            while index < len(choices):
                backend = choices[index]
                backend.in_flight += 1
                outcome, first = first, None
                try:
                    if outcome is None:
                        response = await self._send(request, backend, deadline)
                    elif isinstance(outcome, _Failed):
                        raise outcome
                    else:
                        response = outcome
                    try:
                        await self._relay(request, backend, response, deadline, client)
                    finally:
                        response.close()
                    return
                except _Failed as failure:
                    last_error = f"{backend.url}: {failure}"
                    if failure.kind == "disconnected" and same_backend_retry:
                        # most likely a keep-alive connection the backend had just closed: the
                        # same backend once more, on a new connection
                        same_backend_retry = False
                    else:
                        backend.mark_down()
                        self.metrics.error(model, backend.url, failure.kind)
                        index += 1
                finally:
                    backend.in_flight -= 1
                    deadline.clear()
        finally:
            deadline.close()
        raise _no_backend(target, time.monotonic(), last_error)

    async def _send(
        self, request: ProxiedRequest, backend: Backend, deadline: Deadline
    ) -> Response:
        """Send the request; the response once its headers are in."""
        timeouts = request.target.route.timeouts
        deadline.reset(timeouts.first_byte)
        try:
            return await self.client.pool(backend.url).request(
                b"POST", request.path, request.body_for(backend), timeouts.connect
            )
        except (UpstreamError, OSError) as exc:
            raise _failure(exc) from None
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            deadline.absorb()
            raise _timeout(request) from None

    async def _relay(
        self,
        request: ProxiedRequest,
        backend: Backend,
        response: Response,
        deadline: Deadline,
        client: Connection,
    ) -> None:
        """Relay a response whose headers are in: whole, streamed, or read to its end first."""
        if self.answer(request, backend, response, client):
            return
        if response.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            await self._relay_stream(request, backend, response, deadline, client)
            return
        ttfb = time.perf_counter() - request.started
        deadline.reset(request.target.route.timeouts.idle)
        body = await self._read_rest(response, deadline)
        deadline.clear()
        self._respond(request, backend, response, client, body, ttfb)

    def answer(
        self, request: ProxiedRequest, backend: Backend, response: Response, client: Connection
    ) -> bool:
        """Answer the client if the response is whole (the usual for a small answer: the body
        came with the headers); False if it is a stream or its body is still coming. Raises
        _Failed for an answer that sends the request to the next backend."""
        if response.status in RETRYABLE_STATUS:
            raise _Failed("upstream_5xx", f"answered HTTP {response.status}")
        if response.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            return False  # relayed chunk by chunk, even when it all came at once
        body = response.whole()
        if body is None:
            return False
        self._respond(
            request, backend, response, client, body, time.perf_counter() - request.started
        )
        return True

    def _respond(
        self,
        request: ProxiedRequest,
        backend: Backend,
        response: Response,
        client: Connection,
        body: bytes,
        ttfb: float,
    ) -> None:
        content_type = response.headers.get(b"content-type", b"application/json")
        client.respond(response.status, ((b"content-type", content_type),), body)
        self._done(request, backend, response.status, ttfb, tokens_in(body))

    @staticmethod
    async def _read_rest(response: Response, deadline: Deadline) -> bytes:
        try:
            return await response.read()
        except (UpstreamError, OSError) as exc:
            raise _Failed("stream_broken", f"broke off its answer: {exc}") from None
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            deadline.absorb()
            raise _Failed("timeout", "stalled in the middle of its answer") from None

    async def _relay_stream(
        self,
        request: ProxiedRequest,
        backend: Backend,
        response: Response,
        deadline: Deadline,
        client: Connection,
    ) -> None:
        idle = request.target.route.timeouts.idle
        client.start_stream(response.status, STREAM_HEADERS)
        ttfb: float | None = None
        tokens: int | None = None
        ended_cleanly = True  # whether the last chunk ended an event
        error = ""
        wait = request.target.route.timeouts.first_byte  # for the first chunk, then idle
        try:
            while True:
                deadline.reset(wait)  # the deadline covers waiting on the backend only,
                chunk = await response.next_chunk()
                deadline.clear()  # not a slow client
                if not chunk:
                    break
                if ttfb is None:
                    ttfb = time.perf_counter() - request.started
                    wait = idle
                await client.send_chunk(chunk)
                ended_cleanly = chunk.endswith(b"\n\n")
                if b'"total_tokens"' in chunk:
                    tokens = tokens_in(chunk)
        except (UpstreamError, OSError) as exc:
            error = f"the backend broke off the stream: {exc or type(exc).__name__}"
            kind = "stream_broken"
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            deadline.absorb()
            error = f"the backend sent nothing for {idle:g} s"
            kind = "timeout"
        deadline.clear()
        if error:
            backend.mark_down()
            self.metrics.error(request.target.route.name, backend.url, kind)
            event = error_event(error, "server_error", kind)
            await client.send_chunk(event if ended_cleanly else b"\n\n" + event)
        client.end_stream()
        self._done(request, backend, response.status, ttfb, tokens, error)

    def _done(
        self,
        request: ProxiedRequest,
        backend: Backend,
        status: int,
        ttfb: float | None,
        tokens: int | None,
        error: str = "",
    ) -> None:
        latency = time.perf_counter() - request.started
        model = request.target.route.name
        if status >= 500:
            if backend.server_error():
                self.metrics.error(model, backend.url, "upstream_5xx")
        elif backend.errors_in_a_row:
            backend.errors_in_a_row = 0
        self.metrics.observe(model, backend.url, status, latency, ttfb)
        self.access_log.write(
            request.path, model, backend.url, status, latency, ttfb, tokens, error
        )


class _Exchange:
    """The first try of a request on an idle keep-alive connection, run by callbacks: the
    connection's ``ready``, the deadline's and the client's ``cancel``. A whole answer is
    answered here; anything else goes on in a task (``Upstream._forward``) from where it got."""

    __slots__ = ("upstream", "request", "choices", "connection", "client", "deadline")

    def __init__(
        self,
        upstream: Upstream,
        request: ProxiedRequest,
        choices: list[Backend],
        pool: Pool,
        connection: _Connection,
        client: Connection,
    ) -> None:
        self.upstream = upstream
        self.request = request
        self.choices = choices
        self.connection = connection
        self.client = client
        backend = choices[0]
        backend.in_flight += 1
        self.deadline = upstream.clock.deadline(self)
        self.deadline.reset(request.target.route.timeouts.first_byte)
        client.work = self
        body = request.body_for(backend)
        connection.send(pool.head(b"POST", request.path, len(body)), body, self._ready)

    def _ready(self, response: Response | None, error: UpstreamError | None) -> None:
        self._end()
        try:
            self._relay(response, error)
        except Exception:  # a bug: it must not leave the client waiting
            logger.exception("unexpected error relaying %s", self.request.path)
            self.connection.finish(False)
            self.client.broken()

    def _relay(self, response: Response | None, error: UpstreamError | None) -> None:
        if response is None:
            self._go_on(_failure(error or UpstreamError("no response")))
            return
        try:
            answered = self.upstream.answer(self.request, self.choices[0], response, self.client)
        except _Failed as failure:
            response.close()
            self._go_on(failure)
            return
        if answered:
            response.close()
        else:
            self._go_on(response)

    def cancel(self) -> None:
        """The deadline passed, or the client went away."""
        self._end()
        self.connection.finish(False)
        if self.deadline.expired:
            self._go_on(_timeout(self.request))
        else:
            self.upstream.log_gone(self.request)

    def _end(self) -> None:
        self.choices[0].in_flight -= 1
        self.deadline.close()

    def _go_on(self, first: Response | _Failed) -> None:
        self.client.run(self.upstream._forward(self.request, self.client, self.choices, first))


def _failure(error: BaseException) -> _Failed:
    if isinstance(error, Disconnected):
        return _Failed("disconnected", str(error))
    return _Failed("connect", str(error) or type(error).__name__)


def _timeout(request: ProxiedRequest) -> _Failed:
    return _Failed("timeout", f"no response within {request.target.route.timeouts.first_byte:g} s")


def _no_backend(target: Target, now: float, detail: str) -> ProxyError:
    seconds = retry_after(target.backends, now)
    return ProxyError(
        503,
        f"no healthy backend for model {target.route.name!r} ({detail}); retry in {seconds} s",
        "server_error",
        "no_healthy_backend",
        headers=((b"retry-after", str(seconds).encode()),),
    )
