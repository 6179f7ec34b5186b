"""An engine's release archive, unpacked into the host's data dir: all there, or not at all.

The archive is fetched once on the workstation into the content-addressed store (its sha256
checked while it downloads: from the playbook, or from the release's checksum file), placed on
the host like a model, and unpacked into ``<dest>.partial`` first; only a complete unpacking is
renamed to ``<dest>``. A record (``<dest>/.toolkit-archive``: URL and sha256) makes a second run
cost nothing: the URL and digest it was unpacked from are compared, not the files.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import httpx

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.models.sources import FetchedModel, fetch
from toolkit.models.store import ChecksumMismatch, controller_store
from toolkit.resources.base import Change, HostContext, Resource, RunOptions
from toolkit.resources.placement import place_blob

RECORD = ".toolkit-archive"
UNPACK = {  # how each archive format is unpacked into the current directory
    ".tar.zst": "zstd -dc {file} | tar -xf -",
    ".tar.gz": "tar -xzf {file}",
    ".tgz": "tar -xzf {file}",
    ".tar.xz": "tar -xJf {file}",
    ".tar": "tar -xf {file}",
    ".zip": 'python3 -m zipfile -e {file} . || "$TK_DATA/venv/bin/python" -m zipfile -e {file} .',
}


def archive_format(filename: str) -> str:
    for suffix in UNPACK:
        if filename.endswith(suffix):
            return suffix
    raise ToolkitError(f"{filename}: not an archive toolkit can unpack ({', '.join(UNPACK)})")


def checksum_from_file(text: str, filename: str) -> str | None:
    """The digest of ``filename`` in a ``sha256sum`` listing (``<hex>  ./name`` or ``<hex> *name``)."""
    for line in text.splitlines():
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if name.startswith("./"):
            name = name[2:]
        if name == filename and len(digest) == 64:
            return digest.lower()
    return None


@dataclass
class Release:
    """Where one archive comes from, and how to check it."""

    url: str
    sha256: str | None = None  # from the playbook; else looked up in checksums_url
    checksums_url: str | None = None  # a sha256sum listing published beside the archive
    fix_hint: str = ""  # what to change when the URL does not answer ("runtimes.x.mirror")

    @property
    def filename(self) -> str:
        return posixpath.basename(self.url.split("?", 1)[0])

    def fetch(self, ctx: HostContext, outcome: str) -> FetchedModel:
        """Into the workstation's store, checked against the playbook's sha256 or the published
        one; errors name both digests (and ``outcome``: what was left undone) or the URL tried
        and what to fix."""
        expected = self.sha256 or self.published_sha256()
        try:
            return fetch(
                {"url": self.url},
                sha256=expected,
                store=controller_store(),
                progress=ctx.progress(f"fetch {self.filename}"),
            )
        except ChecksumMismatch as exc:
            raise ToolkitError(
                f"{self.filename}: sha256 is {exc.actual}, expected {exc.expected}; {outcome}"
            ) from None
        except ToolkitError as exc:
            raise ToolkitError(f"{exc}{self.hint()}") from None

    def published_sha256(self) -> str:
        """The digest the release's checksum listing gives for its file."""
        url = self.checksums_url
        if not url:
            raise ToolkitError(
                f"{self.filename}: no sha256 to check it against; give sha256: in the playbook"
            )
        try:
            response = httpx.get(url, follow_redirects=True, timeout=30)
        except httpx.HTTPError as exc:
            raise ToolkitError(f"{url}: {exc}{self.hint()}") from None
        if response.status_code != 200:
            raise ToolkitError(f"{url}: HTTP {response.status_code}{self.hint()}")
        digest = checksum_from_file(response.text, self.filename)
        if digest is None:
            raise ToolkitError(f"{url} lists no sha256 for {self.filename}")
        return digest

    def hint(self) -> str:
        return f" (tried {self.url}; {self.fix_hint})" if self.fix_hint else ""


class Archive(Resource):
    """``release`` unpacked into ``dest`` (relative to the data dir); ``strip`` leading folders
    are dropped from every member, as tar's --strip-components does."""

    def __init__(self, release: Release, dest: str, strip: int = 0):
        self.release = release
        self.dest = dest.strip("/")
        self.strip = strip
        self.id = f"archive:{self.dest}"
        self.format = archive_format(release.filename)

    def probe(self, options: RunOptions) -> str:
        return f'cat "$TK_DATA"/{quote(self.dest)}/{RECORD} 2>/dev/null'

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        url, _, sha = observed.strip().partition(" ")
        if url == self.release.url and (self.release.sha256 in (None, sha)):
            return None
        verb = "replace with" if url else "download and unpack"
        return Change(self, f"{verb} {self.release.filename}")

    def apply(self, change: Change, ctx: HostContext) -> None:
        fetched = self.release.fetch(ctx, "nothing was unpacked")
        dest = ctx.path(self.dest)
        download = ctx.path(f"downloads/{self.release.filename}")
        place_blob(ctx, fetched.path, fetched.sha256, download, self.release.filename)
        ctx.sh(self.unpack_script(download, dest, fetched.sha256), f"unpacking {self.id}", 900)

    def unpack_script(self, archive: str, dest: str, sha256: str) -> str:
        partial = f"{dest}.partial"
        unpack = UNPACK[self.format].format(file=quote(archive))
        strip = ""
        if self.strip:
            # Move the members of the leading folder(s) up: tar's --strip-components is not
            # POSIX, and zip has none.
            strip = (
                'tk_top=$(ls -A | head -n 1); [ "$(ls -A | wc -l)" = 1 ] && [ -d "$tk_top" ] || '
                "{ echo 'expected one top folder in the archive' >&2; exit 1; }\n"
                'mv "$tk_top" .tk-top && (cd .tk-top && tar -cf - .) | tar -xf - && rm -rf .tk-top\n'
            ) * self.strip
        return (
            "set -e\n"
            f"rm -rf {quote(partial)}; mkdir -p {quote(partial)}; cd {quote(partial)}\n"
            f"{unpack}\n{strip}"
            f"printf '%s %s\\n' {quote(self.release.url)} {quote(sha256)} > {RECORD}\n"
            f"cd /; rm -rf {quote(dest)}; mv {quote(partial)} {quote(dest)}; rm -f {quote(archive)}\n"
        )
