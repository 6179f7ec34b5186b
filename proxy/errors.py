"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection


ECHO_LIMIT = 256  # characters of a client-chosen name (model, path) echoed in errors and logs


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: a name a client chose is
    echoed in errors and logs, never whole (it may be megabytes long)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def error_event(message: str, type_: str = "server_error", code: str | None = None) -> bytes:
    """The server-sent event that ends a stream which failed after it started."""
    return b"data: " + error_body(message, type_, code) + b"\n\n"


class ProxyError(Exception):
    """An error answered to the client before any response byte was sent."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        model: str = "",
    ) -> None:
        super().__init__(message)
        self.model = model  # the model the request named, when known (for the access log)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers

    def respond(self, connection: Connection) -> None:
        body = error_body(self.message, self.type, self.code, self.param)
        headers = [(b"content-type", b"application/json"), *self.headers]
        connection.respond(self.status, headers, body)
