"""uvicorn's httptools protocol with the builtin server's limits on what a client sends before its
request's head is complete, and its error answers in OpenAI's shape.

uvicorn bounds no request head: a header that never ends is buffered as it comes, each piece
copied onto the last, for as long as the client sends. Here the bytes of a head are counted from
its first to its last; past ``MAX_HEAD_BYTES`` the client gets 431 and the connection closes, as
with the builtin server. A request uvicorn cannot parse is answered 400 in OpenAI's error shape.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .connection import MAX_HEAD_BYTES, STATUS_LINES
from .errors import error_body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = 0  # of the head being read; None while a body is read

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._head_bytes is not None
            and self._head_bytes > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            self._refuse(431, "the request headers are too large")

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"invalid HTTP request: {msg}")

    def _refuse(self, status: int, message: str) -> None:
        """Answer now if no other answer is under way on this connection, then close it."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            body = error_body(message, "invalid_request_error")
            head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close"
            self.transport.write(STATUS_LINES[status] + head % len(body) + b"\r\n\r\n" + body)
        self.transport.close()
