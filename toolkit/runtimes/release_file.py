"""One file of a release that is not an archive (LlamaEdge's ``llama-api-server.wasm``), placed.

Like ``resources.archive.Archive``: fetched once on the workstation into the content-addressed
store, its sha256 checked while it downloads (from the playbook, or the release's checksum
listing), then placed on the host all or nothing. A record beside it (``<dest>.toolkit-release``:
URL and sha256) makes a second run cost nothing.
"""

from __future__ import annotations

import httpx

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.models.sources import fetch
from toolkit.models.store import ChecksumMismatch
from toolkit.resources.archive import Release, checksum_from_file
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
        from toolkit.models.store import controller_store

        expected = self.release.sha256 or published_sha256(self.release)
        try:
            fetched = fetch(
                {"url": self.release.url},
                sha256=expected,
                store=controller_store(),
                progress=ctx.progress(f"fetch {self.release.filename}"),
            )
        except ChecksumMismatch as exc:
            raise ToolkitError(
                f"{self.release.filename}: sha256 is {exc.actual}, expected {exc.expected}; "
                "nothing was placed"
            ) from None
        except ToolkitError as exc:
            raise ToolkitError(f"{exc}{hint(self.release)}") from None
        dest = ctx.path(self.dest)
        ctx.sh(f"mkdir -p {quote(dest.rsplit('/', 1)[0])}", f"creating the folder of {self.id}")
        place_blob(ctx, fetched.path, fetched.sha256, dest, self.release.filename)
        ctx.sh(
            f"chmod {self.mode:o} {quote(dest)} && printf '%s %s\\n' {quote(self.release.url)} "
            f"{quote(fetched.sha256)} > {quote(dest + RECORD_SUFFIX)}",
            f"recording {self.id}",
        )


def published_sha256(release: Release) -> str:
    """The digest the release's checksum listing gives for its file."""
    url = release.checksums_url
    if not url:
        raise ToolkitError(
            f"{release.filename}: no sha256 to check it against; give one in the playbook"
        )
    try:
        response = httpx.get(url, follow_redirects=True, timeout=30)
    except httpx.HTTPError as exc:
        raise ToolkitError(f"{url}: {exc}{hint(release)}") from None
    if response.status_code != 200:
        raise ToolkitError(f"{url}: HTTP {response.status_code}{hint(release)}")
    digest = checksum_from_file(response.text, release.filename)
    if digest is None:
        raise ToolkitError(f"{url} lists no sha256 for {release.filename}")
    return digest


def hint(release: Release) -> str:
    return f" (tried {release.url}; {release.fix_hint})" if release.fix_hint else ""
