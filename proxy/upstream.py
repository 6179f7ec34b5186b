"""Forwarding a request to a backend and relaying its answer, streamed or whole.

The upstream client is our own (``client.py``): a keep-alive pool around httptools' parser.

A request is retried on the next backend only while nothing has been sent to the client:
connection errors, 502/503/504 answers and first-byte timeouts mark the backend down (it rests for
a cool-off) and move on. Other answers, 500 included, are the backend's word on *this* request and
are passed through as they are.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from .access_log import AccessLog, tokens_in
from .backends import Backend, candidates, retry_after
from .client import Client, Disconnected, Response, UpstreamError
from .connection import Connection
from .deadline import Clock, Deadline
from .errors import ProxyError, error_event
from .metrics import Metrics
from .table import Target

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

    async def forward(self, request: ProxiedRequest, client: Connection) -> None:
        """Send ``request`` to the best backend that answers, and relay the answer to
        ``client``, the connection whose task this runs in."""
        target = request.target
        model = target.route.name
        now = time.monotonic()
        choices = candidates(target.backends, now)
        if not choices:
            self.metrics.error(model, "", "no_backend")
            raise _no_backend(target, now, "all backends are down")
        deadline = self.clock.deadline(client.task)  # type: ignore[arg-type]
        last_error = ""
        same_backend_retry = True
        index = 0
        try:
            while index < len(choices):
                backend = choices[index]
                backend.in_flight += 1
                try:
                    await self._try_backend(request, backend, deadline, client)
                    return
                except _Failed as failure:
                    last_error = f"{backend.url}: {failure}"
                    stale = failure.kind == "disconnected" and same_backend_retry
                    if stale:  # most likely a keep-alive connection the backend had just closed
                        same_backend_retry = False
                        continue
                    backend.mark_down()
                    self.metrics.error(model, backend.url, failure.kind)
                    index += 1
                finally:
                    backend.in_flight -= 1
                    deadline.clear()
        finally:
            deadline.close()
        raise _no_backend(target, time.monotonic(), last_error)

    async def _try_backend(
        self, request: ProxiedRequest, backend: Backend, deadline: Deadline, client: Connection
    ) -> None:
        timeouts = request.target.route.timeouts
        deadline.reset(timeouts.first_byte)
        try:
            response = await self.client.pool(backend.url).request(
                b"POST", request.path, request.body_for(backend), timeouts.connect
            )
        except Disconnected as exc:
            raise _Failed("disconnected", str(exc)) from None
        except (UpstreamError, OSError) as exc:
            raise _Failed("connect", str(exc) or type(exc).__name__) from None
        except asyncio.CancelledError:
            if not deadline.expired:
                raise
            deadline.absorb()
            raise _Failed("timeout", f"no response within {timeouts.first_byte:g} s") from None
        try:
            if response.status in RETRYABLE_STATUS:
                raise _Failed("upstream_5xx", f"answered HTTP {response.status}")
            if response.header(b"content-type").startswith(b"text/event-stream"):
                await self._relay_stream(request, backend, response, deadline, client)
                return
            ttfb = time.perf_counter() - request.started
            body = response.whole()
            if body is None:
                deadline.reset(timeouts.idle)
                body = await self._read_rest(response, deadline)
                deadline.clear()
            content_type = response.header(b"content-type", b"application/json")
            client.respond(response.status, ((b"content-type", content_type),), body)
            self._done(request, backend, response.status, ttfb, tokens_in(body))
        finally:
            response.close()

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
        self.metrics.observe(model, backend.url, status, latency, ttfb)
        self.access_log.write(
            request.path, model, backend.url, status, latency, ttfb, tokens, error
        )


def _no_backend(target: Target, now: float, detail: str) -> ProxyError:
    seconds = retry_after(target.backends, now)
    return ProxyError(
        503,
        f"no healthy backend for model {target.route.name!r} ({detail}); retry in {seconds} s",
        "server_error",
        "no_healthy_backend",
        headers=((b"retry-after", str(seconds).encode()),),
    )
