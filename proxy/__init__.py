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
) -> None:
    """Run the proxy for ``routes_path`` on ``host:port`` until interrupted (blocking)."""
    from .server import serve as _serve

    _serve(
        routes_path,
        host,
        port,
        allow_unauthenticated=allow_unauthenticated,
        access_log=access_log,
    )


__all__ = ["serve"]
