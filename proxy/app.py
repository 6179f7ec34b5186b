"""The proxy's ASGI app: OpenAI endpoints routed by the body's ``model``, plus /health and /metrics.

The POST endpoints are plain ASGI callables (no Request/Response objects on the hot path); the
rest are ordinary Starlette endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .access_log import AccessLog
from .backends import Backend
from .capabilities import estimate_tokens, fold_system_messages
from .errors import ProxyError, error_body
from .health import HealthChecker
from .metrics import CONTENT_TYPE, Metrics
from .reload import RoutesWatcher
from .table import RouteTable, load_table
from .upstream import ProxiedRequest, Upstream

logger = logging.getLogger("proxy")

PROXIED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


class Proxy:
    """Everything one running proxy holds: the live table, the upstream client, the checkers."""

    def __init__(
        self, routes_path: str | Path, access_log: bool = True, require_keys: bool = False
    ) -> None:
        self.routes_path = Path(routes_path)
        self.table: RouteTable = load_table(self.routes_path)
        self.metrics = Metrics(self.backends)
        self.access_log = AccessLog(enabled=access_log)
        self.upstream = Upstream(self.metrics, self.access_log)
        self.health = HealthChecker(
            self.upstream.client,
            self.backends,
            lambda: self.table.routes.health_interval,
        )
        self.watcher = RoutesWatcher(self.routes_path, lambda: self.table, self._swap, require_keys)
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once started

    def backends(self) -> list[Backend]:
        return list(self.table.backends.values())

    def _swap(self, table: RouteTable) -> None:
        self.table = table

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        tasks = [
            asyncio.create_task(self.health.run(), name="proxy-health"),
            asyncio.create_task(self.watcher.run(), name="proxy-routes-watcher"),
        ]
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.watcher.reload)
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.upstream.close()
            self.access_log.flush()


class ProxyEndpoint:
    """ASGI endpoint for one OpenAI POST path: check, parse, route, forward."""

    def __init__(self, proxy: Proxy, path: str) -> None:
        self.proxy = proxy
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        table = self.proxy.table
        try:
            if table.keys and not table.keys.allows(_header(scope, b"authorization")):
                raise _unauthorized()
            request = _parse(self.path, table, await _read_body(receive, table.max_body_bytes))
            request.started = started
        except ProxyError as exc:
            await exc.send(send)
            latency = time.perf_counter() - started
            self.proxy.metrics.observe("", "", exc.status, latency, None)
            self.proxy.access_log.write(
                self.path, exc.model, "", exc.status, latency, None, None, exc.message
            )
            return
        await self._forward(request, receive, send)

    async def _forward(self, request: ProxiedRequest, receive: Receive, send: Send) -> None:
        loop = self.proxy.loop or asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        watch = DisconnectWatch(receive, loop, task)
        model = request.target.route.name
        try:
            await self.proxy.upstream.forward(request, send, loop, task)
        except ProxyError as exc:
            await exc.send(send)
            latency = time.perf_counter() - request.started
            self.proxy.metrics.observe(model, "", exc.status, latency, None)
            self.proxy.access_log.write(
                self.path, model, "", exc.status, latency, None, None, exc.message
            )
        except asyncio.CancelledError:
            if not watch.disconnected:
                raise
            watch.absorb()
            latency = time.perf_counter() - request.started
            self.proxy.access_log.write(
                self.path, model, "", 499, latency, None, None, "client disconnected"
            )
        finally:
            watch.stop()


class DisconnectWatch:
    """Cancels the request's task when its client goes away, so the upstream request is closed
    at once (not at the next chunk, which may be minutes away for a slow generation).

    The watching starts ``START_AFTER`` seconds into the request: most answers are complete by
    then, and they need no watching task at all (a task per request cost ~5% of throughput)."""

    START_AFTER = 0.05

    __slots__ = ("_task", "_receive", "_loop", "_stopped", "disconnected", "_message", "_timer")

    def __init__(
        self, receive: Receive, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]
    ) -> None:
        self._task = task
        self._receive = receive
        self._loop = loop
        self._stopped = False
        self.disconnected = False
        self._message: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_later(self.START_AFTER, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._message = self._loop.create_task(self._receive())
        self._message.add_done_callback(self._on_message)

    def _on_message(self, future: asyncio.Future[Any]) -> None:
        if self._stopped or future.cancelled() or future.exception() is not None:
            return
        if future.result().get("type") == "http.disconnect":
            self.disconnected = True
            self._task.cancel()

    def absorb(self) -> None:
        """After catching the CancelledError we caused: undo the cancel request (Python 3.11+)."""
        uncancel = getattr(self._task, "uncancel", None)
        if uncancel is not None:
            uncancel()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._message is not None:
            self._message.cancel()


async def _read_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProxyError(400, "the client went away while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _parse(path: str, table: RouteTable, body: bytes) -> ProxiedRequest:
    if not body:
        raise ProxyError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ProxyError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise ProxyError(400, "the request body must be a JSON object", code="invalid_json")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ProxyError(400, "'model' is required", code="missing_model", param="model")
    target = table.targets.get(model)
    if target is None:
        raise _not_found(model, table)
    raw = body
    capabilities = target.route.capabilities
    if not capabilities.system_role and isinstance(payload.get("messages"), list):
        folded = fold_system_messages(payload["messages"])
        if folded is not None:
            payload["messages"] = folded
            raw = json.dumps(payload).encode()
    if capabilities.max_context is not None:
        estimate = estimate_tokens(payload)
        if estimate >= capabilities.max_context:
            raise ProxyError(
                400,
                f"This model's maximum context length is {capabilities.max_context} tokens; "
                f"the input is about {estimate} tokens (estimated as characters / 4). "
                "Shorten the input.",
                code="context_length_exceeded",
                param="messages" if "messages" in payload else "input",
            )
    return ProxiedRequest(path, target, payload, raw, 0.0)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _not_found(model: str, table: RouteTable) -> ProxyError:
    return ProxyError(
        404,
        f"The model {model!r} does not exist; models here: {table.model_names}",
        code="model_not_found",
        param="model",
        model=model,
    )


def _unauthorized() -> ProxyError:
    return ProxyError(
        401,
        "Incorrect or missing API key; send 'Authorization: Bearer KEY'.",
        code="invalid_api_key",
    )


def _too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"the request body is over {limit} bytes", code="request_too_large")


def _authorized(proxy: Proxy, request: Request) -> Response | None:
    keys = proxy.table.keys
    if keys and not keys.allows(_header(request.scope, b"authorization")):
        error = _unauthorized()
        return Response(
            error_body(error.message, error.type, error.code), 401, media_type="application/json"
        )
    return None


class ProxyApp:
    """The ASGI app: the OpenAI POST paths go straight to their endpoint (no router on the hot
    path); everything else, lifespan included, goes to the Starlette app."""

    def __init__(self, proxy: Proxy, fallback: Starlette) -> None:
        self.proxy = proxy
        self.fallback = fallback
        self.endpoints = {path: ProxyEndpoint(proxy, path) for path in PROXIED_PATHS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.fallback(scope, receive, send)


def create_app(
    routes_path: str | Path, *, access_log: bool = True, require_keys: bool = False
) -> ProxyApp:
    """The proxy for the routes file at ``routes_path`` (raises RoutesError if it is wrong).
    ``require_keys``: a reload that leaves no API key is refused (a proxy open to the network)."""
    proxy = Proxy(routes_path, access_log=access_log, require_keys=require_keys)

    async def models(request: Request) -> Response:
        denied = _authorized(proxy, request)
        return denied or Response(proxy.table.models_json, media_type="application/json")

    async def model(request: Request) -> Response:
        denied = _authorized(proxy, request)
        if denied:
            return denied
        name = request.path_params["name"]
        for card in proxy.table.model_cards:
            if card["id"] == name:
                return JSONResponse(card)
        error = _not_found(name, proxy.table)
        body = error_body(error.message, error.type, error.code, error.param)
        return Response(body, 404, media_type="application/json")

    async def health(request: Request) -> Response:
        report = {}
        for name in proxy.table.routes.models:
            backends = proxy.table.targets[name].backends
            report[name] = {
                "healthy": sum(1 for backend in backends if backend.healthy),
                "backends": len(backends),
            }
        # 200 while the proxy is up; "degraded" when some model has no healthy backend
        status = "ok" if all(model["healthy"] for model in report.values()) else "degraded"
        return JSONResponse({"status": status, "models": report})

    async def metrics(request: Request) -> Response:
        denied = _authorized(proxy, request)
        return denied or Response(proxy.metrics.render(), media_type=CONTENT_TYPE)

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *(Route(path, ProxyEndpoint(proxy, path), methods=["POST"]) for path in PROXIED_PATHS),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        body = error_body(
            message, "invalid_request_error", "not_found" if exc.status_code == 404 else None
        )
        return Response(body, exc.status_code, media_type="application/json", headers=exc.headers)

    handlers = {404: http_error, 405: http_error}
    fallback = Starlette(routes=routes, lifespan=proxy.lifespan, exception_handlers=handlers)
    return ProxyApp(proxy, fallback)
