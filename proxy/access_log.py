"""One JSON line per proxied request, written in batches.

Going through the ``logging`` module and a write per line cost ~30% of the proxy's throughput, so
lines are collected and written together at most ``FLUSH_SECONDS`` later (or when many are
waiting). ``proxy.access`` is not a logging logger: it is this small writer.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import TextIO

from .errors import clip

FLUSH_SECONDS = 0.1
FLUSH_LINES = 512
_TOKEN_COUNT = re.compile(rb"\s*:\s*(\d+)")  # what follows "total_tokens"
# a line: ts, the strings (path, model, backend; JSON-encoded once), status, latency, then
_USUAL = '{"ts":%.3f%s%d,"latency_ms":%.2f,"ttfb_ms":%.2f,"tokens":%d}'  # ttfb, tokens
_ANY = '{"ts":%.3f%s%d,"latency_ms":%.2f,"ttfb_ms":%s,"tokens":%s%s}'  # either may be null


def tokens_in(body: bytes) -> int | None:
    """``usage.total_tokens`` from a response body or final stream chunk, when present."""
    at = body.rfind(b'"total_tokens"')  # usage comes last: searching from the end is quick
    if at < 0:
        return None
    match = _TOKEN_COUNT.match(body, at + len(b'"total_tokens"'))
    return int(match.group(1)) if match else None


class AccessLog:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._lines: list[str] = []
        self._middles: dict[tuple[str, str, str], str] = {}
        self._scheduled = False

    def write(
        self,
        path: str,
        model: str,
        backend: str,
        status: int,
        latency: float,
        ttfb: float | None,
        tokens: int | None,
        error: str = "",
    ) -> None:
        if not self.enabled:
            return
        # formatted by hand (same JSON, same key order as json.dumps of a dict): json.dumps per
        # request was ~3% of the proxy's CPU; the strings are encoded once per combination, the
        # numbers by one %-format (half the cost of an f-string with format specs, measured).
        # Only routed requests are cached (a backend, so a model of the routes file): a model
        # name a client made up is neither kept nor written whole
        key = (path, model, backend)
        middle = self._middles.get(key) if backend else None
        if middle is None:
            middle = (
                f',"path":{json.dumps(clip(path))},"model":{json.dumps(clip(model))},'
                f'"backend":{json.dumps(backend)},"status":'
            )
            if backend:
                if len(self._middles) > 4096:
                    self._middles.clear()
                self._middles[key] = middle
        if ttfb is not None and tokens is not None and not error:
            line = _USUAL % (time.time(), middle, status, latency * 1000, ttfb * 1000, tokens)
        else:
            line = _ANY % (
                time.time(),
                middle,
                status,
                latency * 1000,
                "null" if ttfb is None else "%.2f" % (ttfb * 1000),
                "null" if tokens is None else tokens,
                f',"error":{json.dumps(error)}' if error else "",
            )
        self._lines.append(line)
        if len(self._lines) >= FLUSH_LINES:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
                self._scheduled = True
            except RuntimeError:  # no loop: write now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log must not break requests
