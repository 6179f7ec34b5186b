"""toolkit's virtualenv on a host: supervisor, the proxy's packages, and what the runtimes'
installs ask for (a pip-installed engine). Recorded requirements decide whether pip runs at all."""

from __future__ import annotations

from toolkit.assets import proxy_dir
from toolkit.errors import ToolkitError
from toolkit.hosts.connection import CommandFailed, quote
from toolkit.resources import wheelhouse
from toolkit.resources.base import Change, HostContext, Resource, RunOptions

VENV = "venv"
MARKER = "venv/toolkit-requirements.txt"


def proxy_requirements() -> list[str]:
    text = (proxy_dir() / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def wanted_requirements(ctx: HostContext) -> list[str]:
    wanted = {"supervisor", *proxy_requirements(), *ctx.resolved.get("pip", [])}
    return sorted(wanted)


class Virtualenv(Resource):
    id = "runtime:venv"

    def probe(self, options: RunOptions) -> str:
        return f'[ -x "$TK_DATA/{VENV}/bin/python" ] && cat "$TK_DATA/{MARKER}" 2>/dev/null; true'

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        wanted = wanted_requirements(ctx)
        have = sorted(line for line in observed.splitlines() if line.strip())
        if have == wanted:
            return None
        missing = [r for r in wanted if r not in have]
        summary = f"install {' '.join(missing) or 'requirements'}"
        if not have:
            summary = f"create virtualenv, install {' '.join(wanted)}"
        return Change(self, summary, data=wanted)

    def apply(self, change: Change, ctx: HostContext) -> None:
        python = ctx.facts.python3
        if not python:
            raise ToolkitError(
                "python3 not found on the host; install it (Debian: apt-get install python3-venv, "
                "Termux: pkg install python)"
            )
        venv = ctx.path(VENV)
        # An offline host installs from wheels the workstation resolved and shipped.
        sources = (
            wheelhouse.prepare(ctx, python, change.data) if wheelhouse.is_offline(ctx.vars) else []
        )
        script = (
            f"[ -x {quote(venv)}/bin/python ] || {quote(python)} -m venv {quote(venv)} || exit 1\n"
            f"{quote(venv)}/bin/python -m pip install --quiet --disable-pip-version-check "
            + " ".join(quote(r) for r in [*sources, *change.data])
        )
        try:
            ctx.conn.check(script, "installing toolkit's virtualenv", timeout=1800)
        except CommandFailed as exc:
            if "ensurepip" in exc.result.stdout + exc.result.stderr:
                raise ToolkitError(
                    "python3 cannot create a virtualenv here (no ensurepip); install python3-venv"
                ) from None
            raise
        ctx.conn.put_bytes(("\n".join(change.data) + "\n").encode(), ctx.path(MARKER))
