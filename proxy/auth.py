"""API keys: from the routes file's ``keys_file`` and the ``TOOLKIT_API_KEYS`` variable."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path

from .routes import RoutesError

ENV_VAR = "TOOLKIT_API_KEYS"


class KeySet:
    """The keys a client may present as ``Authorization: Bearer KEY``; empty means open."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self._keys = tuple(keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def allows(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries a known key (constant-time per key)."""
        if not self._keys:
            return True
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return False
        given = authorization[7:].strip()
        allowed = False
        for key in self._keys:  # compare with every key, so timing does not tell which matched
            allowed |= hmac.compare_digest(given, key)
        return allowed


def load_keys(keys_file: Path | None, environ: dict[str, str] | None = None) -> KeySet:
    """Keys from ``keys_file`` (one a line, ``#`` comments) plus ``TOOLKIT_API_KEYS`` (comma or
    whitespace separated)."""
    environ = os.environ if environ is None else environ
    keys: set[bytes] = set()
    if keys_file is not None:
        try:
            text = keys_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise RoutesError(
                f"{keys_file}: cannot read keys file: {exc.strerror or exc}"
            ) from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.add(line.encode())
    for key in environ.get(ENV_VAR, "").replace(",", " ").split():
        keys.add(key.encode())
    if keys_file is not None and not keys:
        raise RoutesError(
            f"{keys_file}: the keys file holds no key, which leaves no API key: the proxy would "
            "be open to anyone; add a key (one a line) or remove keys_file"
        )
    return KeySet(frozenset(keys))


def needs_key(path: bytes, proxied: frozenset[bytes]) -> bool:
    """Whether a request for ``path`` must carry a key (when keys are configured): the OpenAI
    paths, /v1/models and /metrics; /health and unknown paths (404) do not."""
    return (
        path in proxied
        or path == b"/v1/models"
        or path.startswith(b"/v1/models/")
        or path == b"/metrics"
    )


def admission(
    keys: Callable[[], KeySet],
    body_limit: Callable[[], int],
    proxied: frozenset[bytes],
    small_body: int,
) -> Callable[[bytes, bytes | None], int | None]:
    """What the server asks once a request's head is read, before its body: None when the
    request needs a key and has no valid one (answered 401 at once), else its body limit:
    ``body_limit()`` for the ``proxied`` paths, ``small_body`` for the rest (nobody reads their
    bodies)."""

    def admit(path: bytes, authorization: bytes | None) -> int | None:
        current = keys()
        if current and needs_key(path, proxied) and not current.allows(authorization):
            return None
        return body_limit() if path in proxied else small_body

    return admit
