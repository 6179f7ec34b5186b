"""A model file placed on a host: fetched once on the workstation, verified, then placed.

On the host a model lives at ``models/sha256-<hex>.gguf`` with a record beside it
(``.toolkit``: size, mtime, sha256). When the file's size and mtime still match the record it is
not hashed again; ``--verify-checksums`` hashes every placed model anyway.

With ``fetch: per_host`` the host downloads the file itself (toolkit/resources/host_fetch.py)
and the workstation fetches nothing; the probe, the record and the checks stay the same. An
offline host cannot do that, and is refused when the run is planned.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.models.sources import fetch
from toolkit.models.store import controller_store, hash_file
from toolkit.offline import is_offline
from toolkit.resources.base import Change, HostContext, Resource, RunOptions
from toolkit.resources.host_fetch import fetch_on_host
from toolkit.resources.placement import place_blob

if TYPE_CHECKING:
    from toolkit.site import ModelSpec


def model_relpath(model: ModelSpec) -> str:
    return f"models/sha256-{model.sha256}.gguf"


class ModelFile(Resource):
    def __init__(self, model: ModelSpec):
        self.model = model
        self.relpath = model_relpath(model)
        self.id = f"model:{model.name}"

    def probe(self, options: RunOptions) -> str:
        path = f'"$TK_DATA"/{quote(self.relpath)}'
        snippet = (
            f"if [ -f {path} ]; then printf 'stat=%s\\n' \"$(tk_stat {path})\"; "
            f"printf 'record=%s\\n' \"$(cat {path}.toolkit 2>/dev/null)\""
        )
        if options.verify_checksums:
            snippet += f"; printf 'sha=%s\\n' \"$(tk_sha_big {path})\""
        return snippet + "; fi"

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        refuse_per_host_when_offline(self.model, ctx)
        seen = dict(line.split("=", 1) for line in observed.splitlines() if "=" in line)
        stat, record = seen.get("stat", ""), seen.get("record", "")
        if not stat:
            where = " on the host" if self.model.fetch == "per_host" else " and place"
            return Change(self, f"fetch{where} ({self.model.source_label})", data="place")
        recorded = record == f"{stat} {self.model.sha256}"
        if ctx.options.verify_checksums:
            sha = seen.get("sha", "")
            if sha != self.model.sha256:
                return Change(self, f"replace: sha256 on the host is {sha[:12]}…", data="replace")
            return None if recorded else Change(self, "record verified checksum", data="record")
        if recorded:
            return None
        return Change(self, "verify the file on the host (changed since last run)", data="verify")

    def apply(self, change: Change, ctx: HostContext) -> None:
        path = ctx.path(self.relpath)
        if change.data == "verify":
            sha = ctx.sh(f"tk_sha_big {quote(path)}", "hashing the model", 3600).stdout.strip()
            if sha == self.model.sha256:
                self._record(ctx, path)
                return
        if change.data in ("verify", "place", "replace"):
            self._place(ctx, path, distrust_cache=change.data != "place")
        self._record(ctx, path)

    def _place(self, ctx: HostContext, path: str, distrust_cache: bool) -> None:
        if self.model.fetch == "per_host":
            what = f"model {self.model.name}"
            fetch_on_host(ctx, self.model.source, self.model.sha256, path, what)
            return
        store = controller_store()
        if distrust_cache and store.has(self.model.sha256):
            # On this machine the placed file is a hard link to the cached blob: whatever
            # damaged one damaged both. Check the blob before placing it again.
            blob = store.blob_path(self.model.sha256)
            if hash_file(blob)[0] != self.model.sha256:
                blob.unlink()
        fetched = fetch(
            self.model.source,
            sha256=self.model.sha256,
            store=store,
            progress=ctx.progress(f"fetch {self.model.name}"),
            hf_token=os.environ.get("HF_TOKEN"),
        )
        ctx.preflight()  # the file's size and header are known now: check before it moves
        place_blob(ctx, fetched.path, self.model.sha256, path, f"model {self.model.name}")

    def _record(self, ctx: HostContext, path: str) -> None:
        ctx.sh(
            f"printf '%s %s\\n' \"$(tk_stat {quote(path)})\" {quote(self.model.sha256)} "
            f"> {quote(path + '.toolkit')}",
            "recording the model's checksum",
        )


def refuse_per_host_when_offline(model: ModelSpec, ctx: HostContext) -> None:
    """``fetch: per_host`` asks the host to reach the internet; an offline host may not."""
    if model.fetch == "per_host" and is_offline(ctx.vars):
        raise ToolkitError(
            f'model "{model.name}" has fetch: per_host, but host {ctx.host.name} is offline '
            "(offline: true or toolkit_offline); set fetch: workstation on the model (toolkit "
            "then fetches it once and places it), or template it per host"
        )
