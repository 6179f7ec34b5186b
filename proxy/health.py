"""Active health checks: each backend's own liveness URL, on an interval.

llama.cpp answers ``/health`` 200 once its model is loaded (503 while loading); Ollama answers
``/api/version``; LlamaEdge and other OpenAI servers answer ``/v1/models``. For llama.cpp the
number of parallel slots is read once from ``/slots``, so the choice can prefer a free slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable

from .backends import Backend
from .client import Client, UpstreamError

logger = logging.getLogger("proxy.health")

HEALTH_PATHS = {
    "llamacpp": "/health",
    "ollama": "/api/version",
    "llamaedge": "/v1/models",
    "openai": "/v1/models",
}
CHECK_TIMEOUT = 3.0


class HealthChecker:
    def __init__(
        self,
        client: Client,
        backends: Callable[[], Iterable[Backend]],
        interval: Callable[[], float],
    ) -> None:
        self._client = client
        self._backends = backends
        self._interval = interval

    async def run(self) -> None:
        """Check every backend, sleep, repeat; until cancelled."""
        while True:
            await self.check_all()
            await asyncio.sleep(self._interval())

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(backend) for backend in list(self._backends())))

    async def check(self, backend: Backend) -> None:
        path = HEALTH_PATHS.get(backend.runtime, "/v1/models")
        try:
            status, _ = await self._get(backend, path)
            ok, detail = status == 200, f"HTTP {status}"
            if ok and backend.runtime == "llamacpp" and backend.slots is None:
                backend.slots = await self._slots(backend)
        except (UpstreamError, OSError, asyncio.TimeoutError) as exc:
            ok, detail = False, str(exc) or type(exc).__name__
        if ok:
            if not backend.healthy:
                logger.warning("backend %s is healthy again", backend.url)
            backend.mark_up()
        else:
            if backend.healthy:
                logger.warning("backend %s failed its health check: %s", backend.url, detail)
            backend.mark_down()
            backend.slots = None  # a restarted engine may have another number: read it again

    async def _get(self, backend: Backend, path: str) -> tuple[int, bytes]:
        async def get() -> tuple[int, bytes]:
            pool = self._client.pool(backend.url)
            response = await pool.request(b"GET", path, connect_timeout=CHECK_TIMEOUT)
            try:
                return response.status, await response.read()
            finally:
                response.close()

        return await asyncio.wait_for(get(), CHECK_TIMEOUT)

    async def _slots(self, backend: Backend) -> int | None:
        try:
            status, body = await self._get(backend, "/slots")
            slots = json.loads(body) if status == 200 else None
        except (UpstreamError, OSError, asyncio.TimeoutError, ValueError):
            return None
        return len(slots) if isinstance(slots, list) and slots else None
