"""Running the proxy under uvicorn, refusing to expose an open proxy by accident."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

from .app import create_app
from .http import CoalescingHttpToolsProtocol
from .table import load_table


class UnsafeBind(Exception):
    """No API keys are configured and the address is reachable from other machines."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(routes_path: str | Path, host: str, require_keys: bool) -> None:
    table = load_table(routes_path)
    if require_keys and not table.keys:
        raise UnsafeBind(
            f"refusing to listen on {host} without API keys: set keys_file in the routes file or "
            "TOOLKIT_API_KEYS, or pass --allow-unauthenticated"
        )


def configure_logging() -> None:
    """Events (health changes, reloads) as plain log lines on stderr; the access log is separate."""
    events = logging.StreamHandler(sys.stderr)
    events.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("proxy")
    root.addHandler(events)
    root.setLevel(logging.INFO)


def serve(
    routes_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    allow_unauthenticated: bool = False,
    access_log: bool = True,
    workers: int = 1,
) -> int:
    """Run the proxy until interrupted; returns the exit status (0 after SIGTERM/SIGINT).

    Raises RoutesError or UnsafeBind before binding, OSError when the address is taken. With
    ``workers`` > 1 the proxy runs as that many processes (see ``workers.py``)."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    require_keys = not is_loopback(host) and not allow_unauthenticated
    check_bind(routes_path, host, require_keys)
    configure_logging()

    def app() -> Any:
        return create_app(routes_path, access_log=access_log, require_keys=require_keys)

    if workers > 1:
        from .workers import run_workers

        return run_workers(lambda sock: run_one(app(), sock), host, port, workers)
    uvicorn.run(app(), host=host, port=port, **UVICORN)
    return 0


UVICORN: dict[str, Any] = {
    "http": CoalescingHttpToolsProtocol,
    "log_level": "warning",
    "access_log": False,
    "server_header": False,
    "proxy_headers": False,
    "date_header": False,
    "timeout_graceful_shutdown": 30,
}


def run_one(app: Any, sock: socket.socket) -> None:
    """One worker process: the app under uvicorn on an already listening socket."""
    config = uvicorn.Config(app, **UVICORN)
    uvicorn.Server(config).run(sockets=[sock])
