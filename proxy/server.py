"""Serving the proxy: the listening socket, the event loop, signals and a graceful stop;
refusing to expose an open proxy by accident.

SIGTERM or SIGINT stops accepting, closes idle connections at once and lets requests in flight
finish (streams included) for up to ``GRACE_SECONDS``. SIGHUP reloads the routes file.

Two servers speak HTTP to the clients: the builtin one (``connection.py``, the default) and
uvicorn (``server="uvicorn"``), which runs the proxy as an ASGI app (``asgi.py``) on the same
listening sockets, workers and signals. Either speaks HTTPS when given a certificate.

Each worker takes at most the routes file's ``max_connections`` clients, and no more than its
open-file limit allows (each client may hold a backend connection too): the soft limit is raised
to the hard one at start, and a cap the limit cannot hold is lowered, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import resource
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

from .app import PROXIED_PATHS, Proxy, create_app
from .auth import admission
from .connection import SMALL_BODY, Connection, Listener
from .routes import TlsFiles
from .sockets import listening
from .table import RouteTable, load_table
from .tls import server_context, tls_files

SWEEP_SECONDS = 5.0  # idle connections are looked for this often (or at half their timeout)
GRACE_SECONDS = 30.0
SERVERS = ("builtin", "uvicorn")

RESERVED_FILES = 64  # descriptors kept for the rest: the listening socket, logs, health checks

logger = logging.getLogger("proxy")


class UnsafeBind(Exception):
    """No API keys are configured and the address is reachable from other machines."""


class ServerUnavailable(Exception):
    """The server asked for is not installed."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(routes_path: str | Path, host: str, require_keys: bool) -> RouteTable:
    table = load_table(routes_path)
    if require_keys and not table.keys:
        raise UnsafeBind(
            f"refusing to listen on {host} without API keys: set keys_file in the routes file or "
            "TOOLKIT_API_KEYS, or pass --allow-unauthenticated"
        )
    return table


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
    server: str = "builtin",
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> int:
    """Run the proxy until SIGTERM or SIGINT; returns the exit status (0 after a signal).

    Raises RoutesError, UnsafeBind, TlsError or ServerUnavailable before binding, OSError when
    the address is taken. With ``workers`` > 1 the proxy runs as that many processes (see
    ``workers.py``). ``server``: builtin or uvicorn. ``tls_cert``/``tls_key`` (PEM files) make
    it speak HTTPS, over the routes file's ``tls``."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if server not in SERVERS:
        raise ValueError(f"server must be one of {', '.join(SERVERS)}")
    require_keys = not is_loopback(host) and not allow_unauthenticated
    table = check_bind(routes_path, host, require_keys)
    tls = tls_files(table.routes.tls, tls_cert, tls_key)
    if tls is not None:
        server_context(tls)  # a certificate that cannot be used is an error before binding
    if server == "uvicorn":
        try:
            import uvicorn  # noqa: F401
        except ImportError:
            raise ServerUnavailable("--server uvicorn needs uvicorn: pip install uvicorn") from None
    configure_logging()

    def run(sock: socket.socket) -> None:
        proxy = create_app(routes_path, access_log=access_log, require_keys=require_keys)
        if server == "uvicorn":
            run_uvicorn_on(proxy, sock, tls)
        else:
            run_on(proxy, sock, server_context(tls) if tls else None)

    if workers > 1:
        from .workers import run_workers

        return run_workers(run, host, port, workers)
    run(listening(host, port))
    return 0


def run_on(proxy: Proxy, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
    """Serve ``proxy`` on the listening ``sock`` until a stop signal (uvloop when installed);
    HTTPS with ``tls``."""
    # what exists now (modules, the routes) lives as long as the process: out of the garbage
    # collector's sight, its collections stay short (measured: ~5% less CPU per request)
    gc.collect()
    gc.freeze()
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(proxy, sock, tls))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


async def _serve(proxy: Proxy, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    admit = admission(lambda: proxy.table.keys, proxy.body_limit, PROXIED_PATHS, SMALL_BODY)
    listener = Listener(proxy.handle, proxy.body_limit, admit)
    _apply_limits(listener, proxy, _file_budget())
    async with proxy.running():
        server = await loop.create_server(lambda: Connection(listener), sock=sock, ssl=tls)
        sweeper = loop.create_task(_close_idle(listener, proxy))
        try:
            await stop
        finally:
            sweeper.cancel()
            server.close()
            listener.stop()
            await _drain(listener)


async def _close_idle(listener: Listener, proxy: Proxy) -> None:
    """Close client connections idle for the routes file's ``keepalive_timeout``, and those
    that read nothing for its ``send_timeout``; keep the limits as the routes file says."""
    budget = _file_budget()
    while True:
        routes = proxy.table.routes
        await asyncio.sleep(
            min(SWEEP_SECONDS, routes.keepalive_timeout / 2, routes.send_timeout / 2)
        )
        _apply_limits(listener, proxy, budget)
        listener.close_idle(proxy.table.routes.keepalive_timeout)


def _file_budget() -> int:
    """How many client connections the open-file limit holds (two descriptors each: the client's
    and a backend's), after raising the soft limit as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return max(1, (soft - RESERVED_FILES) // 2)


def _apply_limits(listener: Listener, proxy: Proxy, budget: int) -> None:
    routes = proxy.table.routes
    listener.send_timeout = routes.send_timeout
    cap = min(routes.max_connections, budget)
    if cap != listener.max_connections and cap < routes.max_connections:
        logger.warning(
            "max_connections %d is more than the open-file limit holds; serving at most %d "
            "connections per worker (raise LimitNOFILE)",
            routes.max_connections,
            cap,
        )
    listener.max_connections = cap


async def _drain(listener: Listener) -> None:
    """Wait for the requests in flight, for ``GRACE_SECONDS`` at most, then close the rest."""
    end = time.monotonic() + GRACE_SECONDS
    while listener.busy() and time.monotonic() < end:
        await asyncio.sleep(0.05)
    for connection in list(listener.connections):
        with contextlib.suppress(Exception):
            connection.close()
    await asyncio.sleep(0)  # let the transports close


def run_uvicorn_on(proxy: Proxy, sock: socket.socket, tls: TlsFiles | None = None) -> None:
    """Serve ``proxy`` as an ASGI app under uvicorn on the listening ``sock`` until a stop
    signal: its HTTP parser is httptools too (with the builtin server's head limit), its event
    loop uvloop when installed. The proxy writes its own access log; the keep-alive timeout and
    the connection cap are the routes file's at start."""
    import uvicorn

    from .asgi import ProxyApp
    from .uvicorn_protocol import LimitedHttpToolsProtocol

    routes = proxy.table.routes
    config = uvicorn.Config(
        ProxyApp(proxy),
        http=LimitedHttpToolsProtocol,
        ws="none",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-* are not read: a client's address is the peer's
        log_level="warning",
        timeout_keep_alive=routes.keepalive_timeout,  # type: ignore[arg-type]
        # connections (and requests) per worker past which uvicorn answers 503
        limit_concurrency=getattr(routes, "max_connections", None),
        timeout_graceful_shutdown=int(GRACE_SECONDS),
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
    )
    # uvicorn re-raises the stop signal once it has stopped, with the handlers it found in
    # place: these, so that a stop ends the process with status 0 as the builtin server does
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stopped)
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run(sockets=[sock])


def _stopped(signum: int, frame: object) -> None:
    """The stop signal, raised again by uvicorn after its graceful stop: nothing left to do."""
