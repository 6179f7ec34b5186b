"""Answering a request with an ASGI app (the Starlette app of /v1/models, /health, /metrics).

The request's body has been read already; the app's answer is collected and written whole, which
suits these endpoints: small JSON or text bodies, never a stream.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import httptools

from .connection import Connection, Request

ASGI = {"version": "3.0", "spec_version": "2.3"}
FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))


async def call_asgi(app: Any, request: Request, connection: Connection) -> None:
    url = httptools.parse_url(request.url)
    raw_path = url.path or b"/"
    path = raw_path.decode("latin-1")
    scope = {
        "type": "http",
        "asgi": ASGI,
        "http_version": request.http_version,
        "method": request.method.decode("latin-1"),
        "scheme": "http",
        "path": unquote(path) if "%" in path else path,
        "raw_path": raw_path,
        "query_string": url.query or b"",
        "root_path": "",
        "headers": request.headers,
        "client": connection.client,
        "server": connection.server,
    }
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await connection.wait_closed()
        return {"type": "http.disconnect"}

    status = 500
    headers: list[tuple[bytes, bytes]] = []
    parts: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in FRAMING]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                connection.respond(status, headers, b"".join(parts))

    await app(scope, receive, send)
