"""Reloading the routes file when it changes (mtime poll) or on SIGHUP.

A bad file is reported and ignored: the proxy keeps serving with the routes it had.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .routes import RoutesError
from .table import RouteTable, load_table

logger = logging.getLogger("proxy.reload")
POLL_SECONDS = 1.0


class RoutesWatcher:
    def __init__(
        self, path: Path, current: Callable[[], RouteTable], apply: Callable[[RouteTable], None]
    ) -> None:
        self.path = path
        self._current = current
        self._apply = apply
        self._seen = self._stamp()

    def _stamp(self) -> tuple[float, ...]:
        stamps = []
        table = self._current()
        for path in (self.path, table.routes.keys_file):
            if path is None:
                continue
            try:
                stat = os.stat(path)
                stamps += [stat.st_mtime_ns, stat.st_size, stat.st_ino]
            except OSError:
                stamps.append(-1)
        return tuple(stamps)

    def reload(self) -> bool:
        """Load the routes file now; on success swap the table in. Returns whether it did."""
        self._seen = self._stamp()
        try:
            table = load_table(self.path, pool=self._current().backends)
        except RoutesError as exc:
            logger.error("routes not reloaded, keeping the previous ones: %s", exc)
            return False
        self._apply(table)
        self._seen = self._stamp()
        logger.warning("routes reloaded from %s: %s", self.path, table.model_names)
        return True

    async def run(self) -> None:
        """Poll the files' mtimes; reload when they change; until cancelled."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if self._stamp() != self._seen:
                self.reload()
