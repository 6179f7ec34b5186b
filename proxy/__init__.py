"""A small, stateless OpenAI-compatible proxy that routes requests by model to backends."""

from __future__ import annotations

from pathlib import Path


def serve(
    routes_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    allow_unauthenticated: bool = False,
    access_log: bool = True,
    workers: int = 1,
) -> int:
    """Run the proxy for ``routes_path`` on ``host:port`` until interrupted (blocking).

    ``workers`` > 1 runs that many processes on the port under a supervising parent; returns the
    exit status (0 once stopped by SIGTERM/SIGINT)."""
    from .server import serve as _serve

    return _serve(
        routes_path,
        host,
        port,
        allow_unauthenticated=allow_unauthenticated,
        access_log=access_log,
        workers=workers,
    )


__all__ = ["serve"]
