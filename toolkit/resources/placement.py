"""Putting a verified blob from the workstation's store at a path on a host, all or nothing.

On this machine the blob is hard-linked into place (same disk: no second copy); on a remote host
it is uploaded next to its destination, hashed there, and renamed only when the sha256 matches.
Models and engine archives are placed the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from toolkit.hosts.connection import LocalConnection, quote
from toolkit.resources.base import HostContext


def place_blob(ctx: HostContext, blob: Path, sha256: str, dest: str, what: str) -> None:
    if isinstance(ctx.conn, LocalConnection):
        link_or_copy(blob, Path(dest))
        return
    partial = f"{dest}.partial"
    ctx.conn.put(blob, partial, 0o644)
    ctx.sh(
        f'if [ "$(tk_sha_big {quote(partial)})" = {quote(sha256)} ]; '
        f"then mv -f {quote(partial)} {quote(dest)}; "
        f"else rm -f {quote(partial)}; echo 'sha256 differs after upload' >&2; exit 1; fi",
        f"placing {what}",
        timeout=3600,
    )


def link_or_copy(blob: Path, dest: Path) -> None:
    """Hard-link the verified blob into place (same disk: no second copy), else copy it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        os.link(blob, tmp)
    except OSError:
        shutil.copyfile(blob, tmp)
    os.replace(tmp, dest)
