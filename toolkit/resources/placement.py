"""Putting a verified blob from the workstation's store at a path on a host, all or nothing.

On this machine the blob is hard-linked into place (same disk: no second copy); on a remote host
its bytes land in ``<dest>.partial``, are hashed there, and the file is renamed to ``<dest>`` only
when the sha256 matches (else removed). Models and engine archives are placed the same way.

When the run has a fan-out (``ctx.fanout``, see toolkit/relay/fanout.py) the bytes may come from
another host that has the blob, or is receiving it, instead of from the workstation; the
contract is the same. ``push_blob`` is the workstation's own upload.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from toolkit.hosts.connection import LocalConnection, quote
from toolkit.resources.base import HostContext


def place_blob(ctx: HostContext, blob: Path, sha256: str, dest: str, what: str) -> None:
    if isinstance(ctx.conn, LocalConnection):
        link_or_copy(blob, Path(dest))
    elif ctx.fanout is not None:
        ctx.fanout.place(ctx, blob, sha256, dest, what)
    else:
        push_blob(ctx, blob, sha256, dest, what, ctx.progress(f"send {what}"))


def push_blob(
    ctx: HostContext,
    blob: Path,
    sha256: str,
    dest: str,
    what: str,
    progress: Callable[[int, int | None], None] | None = None,
) -> None:
    """Upload ``blob`` from the workstation into ``<dest>.partial`` (written in place, so a
    relay on that host can read it while it grows), hash it there, rename it when it matches."""
    partial = f"{dest}.partial"
    put_in_place = getattr(ctx.conn, "put_in_place", None)
    if put_in_place is not None:
        put_in_place(blob, partial, 0o644, progress)
    else:
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
