"""Live state of each backend (in flight, health, free slots) and the choice among them."""

from __future__ import annotations

import math
import time

COOLOFF_FIRST = 1.0  # seconds a backend rests after its first failure
COOLOFF_MAX = 30.0  # doubled per consecutive failure, up to this
ERRORS_IN_A_ROW = 3  # plain 500 answers in a row that rest a backend


class Backend:
    """One upstream server, shared by every model routed to the same URL."""

    __slots__ = (
        "url",
        "runtime",
        "in_flight",
        "healthy",
        "down_until",
        "failures",
        "errors_in_a_row",
        "slots",
    )

    def __init__(self, url: str, runtime: str) -> None:
        self.url = url
        self.runtime = runtime
        self.in_flight = 0
        self.healthy = True  # optimistic until a check or a request says otherwise
        self.down_until = 0.0
        self.failures = 0
        self.errors_in_a_row = 0  # plain 500 answers since its last good one
        self.slots: int | None = None  # llama.cpp parallel slots, when a health check found them

    def __repr__(self) -> str:
        return f"Backend({self.url!r}, {self.runtime!r})"

    def usable(self, now: float) -> bool:
        """Healthy, or resting long enough that one request may try it again."""
        return self.healthy or now >= self.down_until

    def has_free_slot(self) -> bool:
        return self.slots is None or self.in_flight < self.slots

    def mark_down(self, now: float | None = None) -> None:
        """Passive or active failure: rest for a cool-off that doubles while failures go on."""
        now = time.monotonic() if now is None else now
        self.healthy = False
        self.failures += 1
        self.down_until = now + min(COOLOFF_FIRST * 2 ** (self.failures - 1), COOLOFF_MAX)

    def server_error(self) -> bool:
        """A plain 500 was passed through. One is the backend's word on that request (llama.cpp
        answers some bad requests so); ``ERRORS_IN_A_ROW`` in a row mark it down. True then."""
        self.errors_in_a_row += 1
        if self.errors_in_a_row < ERRORS_IN_A_ROW:
            return False
        self.errors_in_a_row = 0
        self.mark_down()
        return True

    def mark_up(self) -> None:
        self.healthy = True
        self.failures = 0
        self.down_until = 0.0


def candidates(backends: list[Backend], now: float) -> list[Backend]:
    """Usable backends, best first: healthy ones before those whose cool-off has just ended
    (they are tried last, so a burst does not pile onto a backend that may still be down), then
    a free slot, then fewest requests in flight."""
    if len(backends) == 1:
        return backends if backends[0].usable(now) else []
    usable = [backend for backend in backends if backend.usable(now)]
    usable.sort(key=lambda b: (not b.healthy, not b.has_free_slot(), b.in_flight))
    return usable


def retry_after(backends: list[Backend], now: float) -> int:
    """Seconds until the first of these backends may be tried again (at least 1)."""
    soonest = min((backend.down_until for backend in backends), default=now + 1)
    return max(1, math.ceil(soonest - now))
