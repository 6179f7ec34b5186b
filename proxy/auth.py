"""API keys: from the routes file's ``keys_file`` and the ``TOOLKIT_API_KEYS`` variable."""

from __future__ import annotations

import hmac
import os
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
    return KeySet(frozenset(keys))
