"""The proxy: OpenAI endpoints routed by the body's ``model``, plus /health and /metrics.

The four OpenAI POST paths are answered here, straight from the parsed request to the socket
(``connection.py``); every other request goes to a small Starlette app through ASGI.
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
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .access_log import AccessLog
from .asgi import call_asgi
from .backends import Backend
from .capabilities import estimate_tokens, fold_system_messages
from .connection import Connection, Request
from .errors import ProxyError, clip, error_body
from .health import HealthChecker
from .metrics import CONTENT_TYPE, Metrics
from .reload import RoutesWatcher
from .table import RouteTable, load_table
from .upstream import ProxiedRequest, Upstream

logger = logging.getLogger("proxy")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_no_constant)  # NaN, Infinity: refused
_decode, _raw_decode = _decoder.decode, _decoder.raw_decode
PROXIED_PATHS = frozenset(
    (b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings", b"/v1/responses")
)


class Proxy:
    """Everything one running proxy holds: the live table, the upstream client, the checkers.
    ``handle`` answers one request."""

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
        self.app = _starlette_app(self)

    def backends(self) -> list[Backend]:
        return list(self.table.backends.values())

    def _swap(self, table: RouteTable) -> None:
        self.table = table

    def body_limit(self) -> int:
        return self.table.max_body_bytes

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Health checks, the routes watcher and SIGHUP reloads, for as long as it serves."""
        tasks = [
            asyncio.create_task(self.health.run(), name="proxy-health"),
            asyncio.create_task(self.watcher.run(), name="proxy-routes-watcher"),
            asyncio.create_task(self.upstream.clock.run(), name="proxy-deadlines"),
        ]
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.watcher.reload)
        # ``python -m proxy`` blocked SIGHUP until now: one sent during start-up is delivered here, instead
        # of ending the process (its default action)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
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

    def handle(self, request: Request, connection: Connection) -> None:
        """Answer one request: the OpenAI POST paths here (check, parse, route, forward; every
        outcome one access log line), the rest through the Starlette app."""
        url = request.url
        path = url if url in PROXIED_PATHS else url.partition(b"?")[0]
        if path not in PROXIED_PATHS:
            if request.too_large:
                _too_large(request.too_large).respond(connection)
            else:
                connection.run(call_asgi(self.app, request, connection))
            return
        started = time.perf_counter()
        table = self.table
        name = path.decode()
        try:
            if request.method != b"POST":
                raise _not_allowed(request.method, name)
            if table.keys and not table.keys.allows(request.header(b"authorization")):
                raise _unauthorized()
            if request.too_large:
                raise _too_large(request.too_large)
            proxied = _parse(name, table, request.body, started)
        except ProxyError as error:
            self.upstream.refused(connection, error, name, "", started)
            return
        self.upstream.forward(proxied, connection)


def _parse(path: str, table: RouteTable, body: bytes, started: float) -> ProxiedRequest:
    if not body:
        raise ProxyError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        payload = _load_json(body.decode())  # UTF-8, as OpenAI's API says
    except ValueError as exc:
        raise ProxyError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    except RecursionError:
        raise ProxyError(
            400, "the request body is nested too deeply", code="invalid_json"
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
            raw = _encode(payload)
    if raw is body and any(name != model for name in target.backend_models.values()):
        _encode(payload)  # it is re-encoded for some backend (``body_for``): it must encode
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
    return ProxiedRequest(path, target, payload, raw, started)


def _load_json(text: str) -> Any:
    """``json.loads``, faster for the usual body (no whitespace around the value): that skips
    ``decode``'s two regex scans for whitespace, ~0.5 us a request. Anything else is left to
    ``decode``, for its answer and its error messages."""
    try:
        value, end = _raw_decode(text)
    except ValueError:
        return _decode(text)
    if end != len(text) and text[end:].strip(" \t\n\r"):
        return _decode(text)  # raises: extra data after the value
    return value


def _encode(payload: dict[str, Any]) -> bytes:
    """The body re-encoded; a number JSON cannot carry (1e400 is read as infinity) is a 400."""
    try:
        return json.dumps(payload, allow_nan=False).encode()
    except ValueError:
        raise ProxyError(
            400, "the request body holds a number out of JSON's range", code="invalid_json"
        ) from None
    except RecursionError:
        raise ProxyError(
            400, "the request body is nested too deeply", code="invalid_json"
        ) from None


def _not_found(model: str, table: RouteTable) -> ProxyError:
    return ProxyError(
        404,
        f"The model {clip(model)!r} does not exist; models here: {table.model_names}",
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


def _not_allowed(method: bytes, path: str) -> ProxyError:
    message = f"{method.decode('latin-1')} {path}: Method Not Allowed; use POST"
    return ProxyError(405, message, headers=((b"allow", b"POST"),))


def _too_large(message: str) -> ProxyError:
    return ProxyError(413, message, code="request_too_large")


def _authorized(proxy: Proxy, request: StarletteRequest) -> Response | None:
    keys = proxy.table.keys
    if keys and not keys.allows(request.headers.get("authorization", "").encode("latin-1")):
        error = _unauthorized()
        return Response(
            error_body(error.message, error.type, error.code), 401, media_type="application/json"
        )
    return None


def _starlette_app(proxy: Proxy) -> Starlette:
    """/v1/models, /v1/models/{name}, /health and /metrics; OpenAI-shaped 404 and 405."""

    async def models(request: StarletteRequest) -> Response:
        denied = _authorized(proxy, request)
        return denied or Response(proxy.table.models_json, media_type="application/json")

    async def model(request: StarletteRequest) -> Response:
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

    async def health(request: StarletteRequest) -> Response:
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

    async def metrics(request: StarletteRequest) -> Response:
        denied = _authorized(proxy, request)
        return denied or Response(proxy.metrics.render(), media_type=CONTENT_TYPE)

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]

    async def http_error(request: StarletteRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {clip(request.url.path)}: {exc.detail}"
        body = error_body(
            message, "invalid_request_error", "not_found" if exc.status_code == 404 else None
        )
        return Response(body, exc.status_code, media_type="application/json", headers=exc.headers)

    return Starlette(routes=routes, exception_handlers={404: http_error, 405: http_error})


def create_app(
    routes_path: str | Path, *, access_log: bool = True, require_keys: bool = False
) -> Proxy:
    """The proxy for the routes file at ``routes_path`` (raises RoutesError if it is wrong).
    ``require_keys``: a reload that leaves no API key is refused (a proxy open to the network)."""
    return Proxy(routes_path, access_log=access_log, require_keys=require_keys)
