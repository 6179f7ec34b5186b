"""A movable deadline for the current task: first byte, then idle time between chunks.

One timer handle per request, moved with ``reset``; cheaper than ``asyncio.wait_for`` around every
read, and it works on Python 3.10 (which has no ``asyncio.timeout``).
"""

from __future__ import annotations

import asyncio


class Deadline:
    """Cancels the task that made it when the time runs out; ``expired`` tells it was us."""

    __slots__ = ("_loop", "_task", "_handle", "expired")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        task: asyncio.Task[object] | None = None,
    ) -> None:
        # given by the caller on the hot path: each lookup is a getpid() system call
        self._loop = loop or asyncio.get_running_loop()
        self._task = task or asyncio.current_task(self._loop)
        self._handle: asyncio.TimerHandle | None = None
        self.expired = False

    def reset(self, seconds: float) -> None:
        """Expire ``seconds`` from now (replacing any earlier expiry)."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(seconds, self._expire)

    def clear(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expire(self) -> None:
        self._handle = None
        self.expired = True
        if self._task is not None:
            self._task.cancel()

    def absorb(self) -> None:
        """After catching the CancelledError we caused: undo the cancel request (Python 3.11+)."""
        uncancel = getattr(self._task, "uncancel", None)
        if uncancel is not None:
            uncancel()
