"""Listening sockets for the proxy: one for a single process, one per worker with SO_REUSEPORT."""

from __future__ import annotations

import socket

BACKLOG = 2048


def resolve(host: str, port: int) -> tuple[int, tuple]:
    """The address family and socket address to bind ``host``:``port`` to."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, address


def bind(family: int, address: tuple, reuse_port: bool = False) -> socket.socket:
    """A bound socket, not yet listening; raises OSError when the address is taken."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def listening(host: str, port: int) -> socket.socket:
    sock = bind(*resolve(host, port))
    sock.listen(BACKLOG)
    return sock
