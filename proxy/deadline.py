"""Deadlines for requests to backends: first byte, then idle time between chunks.

A deadline is a time moved with ``reset``; one clock task per proxy looks at the live deadlines
every ``TICK`` seconds and cancels the work of each one that has passed: a task, or an exchange
run by callbacks (``upstream.py``), which reads ``expired`` to tell a timeout from a client gone.
Moving a number costs next to nothing, where a timer per move (``loop.call_later`` and
``cancel``) was ~5% of the proxy's CPU; the price is that a timeout fires up to ``TICK`` late. It
works on Python 3.10 (which has no ``asyncio.timeout``).
"""

from __future__ import annotations

import asyncio
import time

from .connection import Work

TICK = 0.05


class Clock:
    """Watches the live deadlines; ``run`` until cancelled."""

    def __init__(self) -> None:
        self.live: set[Deadline] = set()

    def deadline(self, work: Work) -> Deadline:
        deadline = Deadline(self, work)
        self.live.add(deadline)
        return deadline

    def expire(self, now: float) -> None:
        for deadline in [d for d in self.live if d.at is not None and d.at <= now]:
            deadline.expire()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.expire(time.monotonic())


class Deadline:
    """Cancels its work when the time runs out; ``expired`` tells it was us."""

    __slots__ = ("_clock", "_work", "at", "expired")

    def __init__(self, clock: Clock, work: Work) -> None:
        self._clock = clock
        self._work = work
        self.at: float | None = None
        self.expired = False

    def reset(self, seconds: float) -> None:
        """Expire ``seconds`` from now (replacing any earlier expiry)."""
        self.at = time.monotonic() + seconds

    def clear(self) -> None:
        self.at = None

    def close(self) -> None:
        """The request is over: the clock forgets this deadline."""
        self.at = None
        self._clock.live.discard(self)

    def expire(self) -> None:
        self.at = None
        self.expired = True
        self._work.cancel()

    def absorb(self) -> None:
        """After catching the CancelledError we caused in a task: undo the cancel request
        (Python 3.11+)."""
        self.expired = False
        uncancel = getattr(self._work, "uncancel", None)
        if uncancel is not None:
            uncancel()
