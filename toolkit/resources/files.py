"""Files toolkit owns on a host: rendered templates and copied scripts, compared by sha256."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable

from toolkit.hosts.connection import quote
from toolkit.resources.base import Change, HostContext, Resource, RunOptions

END = "@@toolkit-end@@"  # ends a file's content in the probe's output


class File(Resource):
    """A file under the data dir whose content is computed from the host's context."""

    def __init__(
        self,
        relpath: str,
        content: Callable[[HostContext], bytes],
        mode: int = 0o644,
        secret: bool = False,
    ):
        self.relpath = relpath
        self.id = f"file:{relpath}"
        self.content = content
        self.mode = mode
        self.secret = secret  # keys: compared by sha256 only, never read back or diffed

    def probe(self, options: RunOptions) -> str:
        path = f'"$TK_DATA"/{quote(self.relpath)}'
        if not options.diff or self.secret:
            return f"tk_sha {path}"
        # One sha line (empty when there is no file), the content as it is, then an end mark
        # (so a last line without its newline, and trailing blank lines, survive).
        return f"printf '%s\\n' \"$(tk_sha {path})\"; cat {path} 2>/dev/null; echo {END}"

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        wanted = self.content(ctx)
        current_sha, _, current_text = observed.partition("\n")
        current_text = current_text.removesuffix(END)
        if current_sha.strip() == hashlib.sha256(wanted).hexdigest():
            return None
        summary = "update" if current_sha.strip() else "create"
        diff = ""
        if ctx.options.diff and not self.secret:
            lines = difflib.unified_diff(
                current_text.splitlines(keepends=True) if current_sha.strip() else [],
                wanted.decode(errors="replace").splitlines(keepends=True),
                fromfile=f"{ctx.path(self.relpath)} (current)",
                tofile=f"{ctx.path(self.relpath)} (wanted)",
            )
            diff = "".join(
                line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                for line in lines
            )
        if self.secret:
            summary += " (a secret: content not shown)"
        return Change(self, summary, diff, data=wanted)

    def apply(self, change: Change, ctx: HostContext) -> None:
        # Rendered again: what it depends on may have arrived since the plan (a model fetched
        # earlier in this run brings the capabilities the routes file names).
        ctx.conn.put_bytes(self.content(ctx), ctx.path(self.relpath), self.mode)


class Tree(Resource):
    """A folder of files copied as they are (e.g. the proxy's code): one resource, one line."""

    def __init__(self, relpath: str, files: dict[str, bytes], mode: int = 0o644):
        self.relpath = relpath
        self.id = f"tree:{relpath}"
        self.files = files  # name -> content
        self.mode = mode

    def probe(self, options: RunOptions) -> str:
        names = " ".join(quote(name) for name in sorted(self.files))
        return f'tk_shas "$TK_DATA"/{quote(self.relpath)} {names}'

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        current = {}  # name -> sha256, from tk_shas' "<sha256>  <name>" lines
        for line in observed.splitlines():
            digest, _, name = line.partition("  ")
            current[name] = digest
        stale = [
            name
            for name, content in sorted(self.files.items())
            if current.get(name, "").strip() != hashlib.sha256(content).hexdigest()
        ]
        if not stale:
            return None
        return Change(self, f"copy {len(stale)} of {len(self.files)} files", data=stale)

    def apply(self, change: Change, ctx: HostContext) -> None:
        for name in change.data:
            ctx.conn.put_bytes(self.files[name], ctx.path(f"{self.relpath}/{name}"), self.mode)
