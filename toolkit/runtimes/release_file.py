"""One file of a release that is not an archive (LlamaEdge's ``llama-api-server.wasm``), placed.

Like ``resources.archive.Archive``: fetched once on the workstation into the content-addressed
store, its sha256 checked while it downloads (from the playbook, or the release's checksum
listing), then placed on the host all or nothing. A record beside it (``<dest>.toolkit-release``:
URL and sha256) makes a second run cost nothing.
"""

from __future__ import annotations

from toolkit.hosts.connection import quote
from toolkit.resources.archive import Release
from toolkit.resources.base import Change, HostContext, Resource, RunOptions
from toolkit.resources.placement import place_blob

RECORD_SUFFIX = ".toolkit-release"


class ReleaseFile(Resource):
    """``release`` placed at ``dest`` (relative to the data dir)."""

    def __init__(self, release: Release, dest: str, mode: int = 0o644):
        self.release = release
        self.dest = dest.strip("/")
        self.mode = mode
        self.id = f"release-file:{self.dest}"

    def probe(self, options: RunOptions) -> str:
        path = f'"$TK_DATA"/{quote(self.dest)}'
        return f"[ -f {path} ] && cat {path}{RECORD_SUFFIX} 2>/dev/null"

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        url, _, sha = observed.strip().partition(" ")
        if url == self.release.url and self.release.sha256 in (None, sha):
            return None
        verb = "replace with" if url else "download"
        return Change(self, f"{verb} {self.release.filename}")

    def apply(self, change: Change, ctx: HostContext) -> None:
        fetched = self.release.fetch(ctx, "nothing was placed")
        dest = ctx.path(self.dest)
        ctx.sh(f"mkdir -p {quote(dest.rsplit('/', 1)[0])}", f"creating the folder of {self.id}")
        place_blob(ctx, fetched.path, fetched.sha256, dest, self.release.filename)
        ctx.sh(
            f"chmod {self.mode:o} {quote(dest)} && printf '%s %s\\n' {quote(self.release.url)} "
            f"{quote(fetched.sha256)} > {quote(dest + RECORD_SUFFIX)}",
            f"recording {self.id}",
        )
