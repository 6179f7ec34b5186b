"""``python -m proxy --routes FILE --host H --port P [--server uvicorn] [--tls-cert C --tls-key K]``"""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None, prog: str = "python -m proxy") -> int:
    # a reload (SIGHUP) sent while the proxy starts waits until the proxy can do it
    # (``Proxy.running`` unblocks it), instead of ending the process: blocked before the
    # imports, which take most of the start-up; forked workers inherit the block
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    from .routes import RoutesError
    from .server import SERVERS, ServerUnavailable, UnsafeBind, serve
    from .tls import TlsError

    parser = argparse.ArgumentParser(prog=prog, description="OpenAI-compatible routing proxy")
    parser.add_argument("--routes", required=True, help="the routes file (YAML)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen on a non-loopback address even with no API keys configured",
    )
    parser.add_argument("--no-access-log", action="store_true", help="no JSON line per request")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the port (default 1); a crashed one is restarted",
    )
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default="builtin",
        help="the HTTP server: the builtin one (default) or uvicorn (the proxy as an ASGI app)",
    )
    parser.add_argument("--tls-cert", help="speak HTTPS with this certificate (PEM, chain after)")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        return serve(
            args.routes,
            args.host,
            args.port,
            allow_unauthenticated=args.allow_unauthenticated,
            access_log=not args.no_access_log,
            workers=args.workers,
            server=args.server,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except (RoutesError, UnsafeBind, TlsError, ServerUnavailable) as exc:
        print(f"proxy: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"proxy: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
