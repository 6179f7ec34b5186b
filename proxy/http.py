"""uvicorn's httptools protocol, writing a response's head and first body part in one syscall.

uvicorn writes the status line and headers as soon as ``http.response.start`` is sent, then the
body on ``http.response.body``; with uvloop each write is its own ``send`` system call, and on
loopback a send also runs the receiver's TCP path. Holding the head until the body's first part
(or the end of the current event-loop iteration, whichever comes first) makes one ``writev`` of
the two: measured ~10% more requests a second for small answers. The order of bytes never
changes; only a head with no body right behind it waits, for one loop iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps a transport: a write that looks like a response head is held for the next write."""

    __slots__ = ("_transport", "_loop", "_head", "_flush_handle")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._flush_handle.cancel()  # type: ignore[union-attr]
            self._flush_handle = None
            self._transport.writelines((head, data))
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":
            self._head = data
            self._flush_handle = self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, data: Any) -> None:
        self.flush()
        self._transport.writelines(data)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else: the real transport
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
