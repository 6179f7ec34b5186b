"""Reloading the routes file when it changes (mtime poll) or on SIGHUP.

A bad file is reported and ignored: the proxy keeps serving with the routes it had. So is a file
that leaves no API keys on a proxy that needs them (it listens beyond loopback and was not told
``--allow-unauthenticated``): emptying the keys file must not open the proxy to the network.
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
        self,
        path: Path,
        current: Callable[[], RouteTable],
        apply: Callable[[RouteTable], None],
        require_keys: bool = False,
    ) -> None:
        self.path = path
        self.require_keys = require_keys
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
        if self.require_keys and not table.keys:
            logger.error(
                "routes not reloaded, keeping the previous ones: %s leaves no API key, and this "
                "proxy listens beyond loopback",
                self.path,
            )
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
