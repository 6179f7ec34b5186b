"""HTTPS towards the proxy's clients: the certificate and key from the routes file's ``tls`` or
from ``--tls-cert``/``--tls-key`` (which win), checked before the proxy listens."""

from __future__ import annotations

import ssl
from pathlib import Path

from .routes import TlsFiles


class TlsError(Exception):
    """The certificate or key cannot be used; the message names the file."""


def tls_files(
    from_routes: TlsFiles | None, cert: str | Path | None = None, key: str | Path | None = None
) -> TlsFiles | None:
    """The files to serve HTTPS with, or None for plain HTTP."""
    if (cert is None) != (key is None):
        raise TlsError("--tls-cert and --tls-key go together: give both or neither")
    if cert is not None and key is not None:
        return TlsFiles(cert=Path(cert), key=Path(key))
    return from_routes


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later, Python's default ciphers)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for path in (files.cert, files.key):
        try:
            path.read_bytes()
        except OSError as exc:
            raise TlsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise TlsError(
            f"{files.cert}, {files.key}: not a PEM certificate and its key: {exc.reason or exc}"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context
