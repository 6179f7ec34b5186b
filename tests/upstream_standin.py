"""Stand-in upstreams for the proxy's tests, and a runner for the proxy itself.

``StandIn`` is a real HTTP server on 127.0.0.1 (aiohttp.web on its own thread and event loop) that
speaks just enough of the OpenAI API to stand in for llama.cpp, and can misbehave on purpose:
answer 503 as llama.cpp does while loading, die in the middle of a stream, or stream slowly so a
test can watch the proxy close the request when its client goes away. It is a stand-in, not an
engine: the real engine is the ``llama_engine`` fixture.

``ProxyProcess`` runs ``python -m proxy`` in a subprocess on a free port and stops it by pid, with
either HTTP server (``server``: builtin or uvicorn) and optionally HTTPS.

The ``standin`` fixture (a ``StandIn`` in ok mode for one test) reaches every test module through
``pytest_plugins`` in conftest.py. So does ``proxy_server``: a test that asks for it runs once per
HTTP server the proxy has, so that their behaviour cannot drift apart; one marked
``@pytest.mark.builtin_only("why")`` runs against the builtin server alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.conftest import REPO, free_port, stop_process, wait_http_ok

MODES = ("ok", "loading", "die_mid_stream", "error")
SERVERS = ("builtin", "uvicorn")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "builtin_only(reason): what uvicorn cannot do alike; runs on the builtin server"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "proxy_server" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("builtin_only")
        servers = SERVERS[:1] if only else SERVERS
        metafunc.parametrize("proxy_server", servers, scope="module")


@pytest.fixture
def standin():
    with StandIn() as server:
        yield server


class StandIn:
    """A stand-in OpenAI upstream. ``mode``: ok | loading (503 everywhere) | die_mid_stream |
    error (completions answer 500, as llama.cpp does for some requests it cannot serve)."""

    def __init__(
        self, mode: str = "ok", chunks: int = 5, delay: float = 0.0, health_status: int = 0
    ) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.health_status = health_status  # 0: as the mode says
        self.chunks = chunks
        self.delay = delay
        self.stall = 0.0  # seconds every completion waits before its first byte
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0  # completions/embeddings requests received
        self.chunks_sent = 0  # stream chunks written (each write waits while the reader lags)
        self.bodies: list[dict[str, Any]] = []
        self.checked: list[str] = []  # the paths of the health checks it answered
        self.client_closed = threading.Event()  # a stream's reader went away before its end
        self.closed_at: float | None = None
        self.stream_started = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._health)
        app.router.add_get("/api/version", self._health)  # Ollama's liveness
        app.router.add_post("/v1/chat/completions", self._completion)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_post("/v1/embeddings", self._embeddings)
        # handler_cancellation: a handler is cancelled when its client (the proxy) goes away
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _health(self, request: web.Request) -> web.Response:
        self.checked.append(request.path)
        if self.health_status:
            return web.json_response({"status": "ok"}, status=self.health_status)
        if self.mode == "loading":
            return _loading()
        return web.json_response({"status": "ok", "data": [{"id": "standin"}]})

    async def _embeddings(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        self.bodies.append(body)
        if self.mode == "loading":
            return _loading()
        return web.json_response(
            {
                "object": "list",
                "model": body["model"],
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        self.bodies.append(body)
        if self.mode == "loading":
            return _loading()
        if self.mode == "error":
            error = {"code": 500, "message": "stand-in failure", "type": "server_error"}
            return web.json_response({"error": error}, status=500)
        try:  # stall before any byte of the answer
            await asyncio.sleep(float(body.get("standin_stall", self.stall)))
        except asyncio.CancelledError:
            self._closed()
            raise
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "standin-1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "stand-in answer"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                }
            )
        chunks = int(body.get("standin_chunks", self.chunks))
        delay = float(body.get("standin_delay", self.delay))
        padding = int(body.get("standin_padding", 0))  # bytes added to each chunk's text
        if body.get("standin_in_one_piece"):  # the whole stream in one write, with a length
            events = b"".join(sse_chunk(body["model"], index) for index in range(chunks))
            return web.Response(body=events + b"data: [DONE]\n\n", content_type="text/event-stream")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.stream_started.set()
        try:
            for index in range(chunks):
                if self.mode == "die_mid_stream" and index == chunks // 2:
                    assert request.transport is not None
                    request.transport.abort()  # the engine crashed
                    return response
                await response.write(sse_chunk(body["model"], index, padding))
                self.chunks_sent += 1
                if delay:
                    await asyncio.sleep(delay)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError, RuntimeError):
            self._closed()
        except asyncio.CancelledError:
            self._closed()
            raise
        return response

    def _closed(self) -> None:
        self.closed_at = time.monotonic()
        self.client_closed.set()


def sse_chunk(model: str, index: int, padding: int = 0) -> bytes:
    text = f"tok{index} " + "x" * padding
    chunk = {
        "id": "standin-1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _loading() -> web.Response:
    return web.json_response(
        {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
        status=503,
    )


class ProxyProcess:
    """``python -m proxy`` on a free loopback port, for one test; ``stop()`` ends it by pid."""

    def __init__(
        self,
        routes: dict[str, Any],
        directory: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        server: str = "builtin",
        ca: Path | None = None,
    ) -> None:
        """``server``: the HTTP server; ``ca``: the certificate to trust when the proxy speaks
        HTTPS (its routes or ``args`` give it a certificate)."""
        assert server in SERVERS, server
        self.server = server
        self.routes_path = directory / "routes.yml"
        self.write_routes(routes)
        self.port = free_port()
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.log_path = directory / "proxy.log"
        environ = {k: v for k, v in os.environ.items() if k != "TOOLKIT_API_KEYS"}
        environ.update(env or {})
        argv = [
            sys.executable, "-m", "proxy",
            "--routes", str(self.routes_path),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--server", server,
            *args,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            verify = ssl.create_default_context(cafile=ca) if ca else True
            wait_http_ok(self.url + "/health", deadline_s=30, proc=self.process, verify=verify)
        except BaseException:
            self.stop()
            raise

    def write_routes(self, routes: dict[str, Any]) -> None:
        temporary = self.routes_path.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump(routes))
        temporary.replace(self.routes_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def routes_for(model: str, *urls: str, runtime: str = "llamacpp", **extra: Any) -> dict[str, Any]:
    """A routes mapping with one model served by ``urls``."""
    return {
        "models": {model: {"backends": [{"url": u, "runtime": runtime} for u in urls], **extra}}
    }
