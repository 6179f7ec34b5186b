"""toolkit's virtualenv on a host: supervisor, the proxy's packages, and what the runtimes'
installs ask for (a pip-installed engine). Recorded requirements decide whether anything runs.

Its contents are built on the workstation, once per platform, and shipped as one file
(``venv_bundle.py``): the host does no resolving, downloading or compiling, and needs no
internet. Only when the workstation cannot resolve the requirements for the host's platform (no
binary wheels for it, no index reachable from the workstation) does a host with internet run
``pip install`` itself; an offline host fails instead, saying why. The workstation itself (a
local host) installs with pip straight into its venv: there is nothing to ship.
"""

from __future__ import annotations

from toolkit.assets import proxy_dir
from toolkit.errors import ToolkitError
from toolkit.hosts.connection import CommandFailed, LocalConnection, quote
from toolkit.offline import is_offline
from toolkit.resources import venv_bundle, wheelhouse
from toolkit.resources.base import Change, HostContext, Resource, RunOptions
from toolkit.resources.placement import place_blob
from toolkit.workstation import cache_dir

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
        if not python and ctx.facts.termux:
            # installed in this run by pkg (Packages comes before the virtualenv)
            python = f"{ctx.facts.prefix}/bin/python3"
        if not python:
            raise ToolkitError(
                "python3 not found on the host; install it (Debian: apt-get install python3-venv, "
                "Termux: pkg install python)"
            )
        venv = ctx.path(VENV)
        bundle = built_bundle(ctx, python, change.data)
        if bundle is not None:
            shipped = ctx.path(f"downloads/{bundle.path.name}")
            place_blob(ctx, bundle.path, bundle.sha256, shipped, "toolkit's virtualenv")
            script = venv_bundle.install_script(python, venv, shipped, bundle.platform.python)
        else:  # a host with internet, for which the workstation found no wheels
            venv_python = f"{quote(venv)}/bin/python"
            script = (
                f"[ -x {venv_python} ] || {quote(python)} -m venv {quote(venv)} || exit 1\n"
                # a venv a bundle made has no pip
                f"{venv_python} -m pip --version >/dev/null 2>&1 || "
                f"{venv_python} -m ensurepip --default-pip >/dev/null || exit 1\n"
                f"{venv_python} -m pip install --quiet --disable-pip-version-check "
                + " ".join(quote(r) for r in change.data)
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


def built_bundle(
    ctx: HostContext, python: str, requirements: list[str]
) -> venv_bundle.Bundle | None:
    """The bundle for this host's platform (asked of its python3), resolved and built on the
    workstation; None when that fails and the host may use the index itself."""
    if isinstance(ctx.conn, LocalConnection) and not is_offline(ctx.vars):
        # This machine is the workstation: pip installs straight into the venv with its own
        # cache; a bundle would add a pack and an unpack (13.0 s for the quick start's first
        # apply against 10.9 s with pip, fresh caches both).
        return None
    probe = ctx.conn.check(wheelhouse.platform_probe(python), "reading the host's python platform")
    platform = wheelhouse.parse_platform(probe.stdout)
    try:
        house = wheelhouse.resolve(requirements, platform, cache_dir())
        return venv_bundle.build(house, cache_dir())
    except ToolkitError as exc:
        if is_offline(ctx.vars):
            raise ToolkitError(
                f"this host is offline (offline: true) and its virtualenv could not be built on "
                f"the workstation: {exc}"
            ) from None
        return None
