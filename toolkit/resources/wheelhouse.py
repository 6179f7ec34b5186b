"""A wheelhouse: the hosts' virtualenv requirements resolved once per platform on the workstation.

Without it every host runs its own ``pip install`` against the package index: the same downloads
once per host, and nothing at all on a host without internet. With it the workstation runs
``pip download`` once per (Python version, machine, libc) into toolkit's cache, ships the wheels a
host lacks into ``<data>/wheels/<key>/`` and the host installs with ``--no-index --find-links``:
the host never reaches an index.

``resources/runtime.Virtualenv.apply`` plugs it in with one call: for a host where
``is_offline(ctx.vars)`` (``offline: true`` on the host, or ``-e toolkit_offline=true``),
``prepare(ctx, python3, requirements)`` probes the host's platform, resolves, ships, and returns
the options that make its ``pip install`` use the shipped wheels only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from toolkit.errors import ToolkitError

if TYPE_CHECKING:
    from toolkit.resources.base import HostContext

_PIP_TIMEOUT_S = 1800
_MANIFEST = "requirements.txt"
_OLDEST_MANYLINUX_MINOR = (
    17  # manylinux2014 = manylinux_2_17; PyPI serves nothing older that matters
)
_TRUE = {"1", "true", "yes", "on"}

# Printed by the host's python3: "3.11 x86_64 glibc 2.36" (libc fields empty on musl or macOS).
PLATFORM_PROBE = (
    "import platform, sys; "
    "print('%d.%d' % sys.version_info[:2], platform.machine(), *platform.libc_ver())"
)


@dataclass(frozen=True)
class HostPlatform:
    """What decides which wheels a host can install."""

    python: tuple[int, int]
    machine: str  # uname -m: x86_64, aarch64...
    libc: str = ""  # "glibc", or "" when unknown (musl, macOS)
    libc_version: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        """A directory name: cp311-x86_64-glibc2.36."""
        libc = f"{self.libc}{'.'.join(map(str, self.libc_version or ()))}" or "nolibc"
        return f"cp{self.python[0]}{self.python[1]}-{self.machine}-{libc}"

    def pip_target_args(self) -> list[str]:
        """``pip download`` options that pick wheels for this platform, not the workstation's."""
        version = f"{self.python[0]}.{self.python[1]}"
        abi = f"cp{self.python[0]}{self.python[1]}"
        args = ["--only-binary=:all:", "--python-version", version, "--implementation", "cp"]
        args += ["--abi", abi, "--abi", "abi3", "--abi", "none"]
        for tag in self.platform_tags():
            args += ["--platform", tag]
        return args

    def platform_tags(self) -> list[str]:
        """Newest first: manylinux_2_<minor> down to 2_17, their legacy aliases, then 'any'."""
        tags: list[str] = []
        if self.libc == "glibc" and self.libc_version and self.libc_version[0] == 2:
            for minor in range(self.libc_version[1], _OLDEST_MANYLINUX_MINOR - 1, -1):
                tags.append(f"manylinux_2_{minor}_{self.machine}")
            tags.append(f"manylinux2014_{self.machine}")
            if self.machine in ("x86_64", "i686"):
                tags += [f"manylinux2010_{self.machine}", f"manylinux1_{self.machine}"]
        tags.append("any")
        return tags


def platform_probe(python3: str) -> str:
    """A shell command printing the host's platform line (python3 is needed for the venv anyway)."""
    return f"{shlex.quote(python3)} -c {shlex.quote(PLATFORM_PROBE)}"


def parse_platform(line: str) -> HostPlatform:
    parts = line.split()
    if len(parts) < 2 or not re.fullmatch(r"\d+\.\d+", parts[0]):
        raise ToolkitError(f"cannot read the host's python platform from {line.strip()!r}")
    major, minor = (int(n) for n in parts[0].split("."))
    libc, libc_version = "", None
    if len(parts) >= 4 and parts[2] == "glibc" and re.fullmatch(r"\d+\.\d+", parts[3]):
        libc = "glibc"
        libc_version = tuple(int(n) for n in parts[3].split("."))  # type: ignore[assignment]
    return HostPlatform((major, minor), parts[1], libc, libc_version)


def local_platform() -> HostPlatform:
    """The workstation's own platform (what a local connection's host has)."""
    result = subprocess.run(
        [sys.executable, "-c", PLATFORM_PROBE], capture_output=True, text=True, check=True
    )
    return parse_platform(result.stdout)


def is_offline(host_vars: Mapping[str, Any]) -> bool:
    """``offline: true`` on the host, or ``toolkit_offline=true`` (e.g. from ``-e``)."""
    for key in ("offline", "toolkit_offline"):
        value = host_vars.get(key)
        if value is True or str(value).strip().lower() in _TRUE:
            return True
    return False


def cache_dir() -> Path:
    """toolkit's cache on the workstation (the model store lives next to it)."""
    cache = os.environ.get("TOOLKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "toolkit"
    )
    return Path(cache)


@dataclass(frozen=True)
class Wheelhouse:
    """The wheels that satisfy ``requirements`` on ``platform``, all in ``path``."""

    path: Path
    platform: HostPlatform
    requirements: tuple[str, ...]

    @property
    def wheels(self) -> list[Path]:
        return sorted(self.path.glob("*.whl"))


def resolve(requirements: list[str], platform: HostPlatform, cache: Path) -> Wheelhouse:
    """Download the wheels once per platform and set of requirements; reuse them after.

    The directory records the requirements it was resolved for; another set resolves again
    into the same directory (pip skips the wheels already there). One lock per platform keeps
    parallel host applies from resolving the same platform twice.
    """
    wanted = tuple(sorted(requirements))
    path = cache / "wheelhouse" / platform.key
    path.mkdir(parents=True, exist_ok=True)
    manifest = path / _MANIFEST
    with _locked(path / ".lock"):
        if manifest.is_file() and tuple(manifest.read_text().split()) == wanted:
            return Wheelhouse(path, platform, wanted)
        manifest.unlink(missing_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check"]
        command += ["--quiet", "--dest", str(path), *platform.pip_target_args(), *wanted]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise ToolkitError(
                f"pip download for {platform.key} ({' '.join(wanted)}) failed:\n{tail}"
            )
        manifest.write_text("\n".join(wanted) + "\n")
    return Wheelhouse(path, platform, wanted)


class _Connection(Protocol):
    def check(self, script: str, what: str, **kwargs: Any) -> Any: ...

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None: ...


def ship(conn: _Connection, house: Wheelhouse, remote_dir: str) -> str:
    """Put the wheels ``remote_dir`` lacks (by name and size) on the host; returns the dir."""
    listing = conn.check(
        f"mkdir -p {shlex.quote(remote_dir)} && cd {shlex.quote(remote_dir)} && "
        'for f in *.whl; do [ -f "$f" ] && printf \'%s %s\\n\' "$(wc -c < "$f")" "$f"; done; '
        "true",
        "listing the host's wheels",
    ).stdout
    have = {}
    for line in listing.splitlines():
        size, _, name = line.strip().partition(" ")
        if size.isdigit():
            have[name] = int(size)
    for wheel in house.wheels:
        if have.get(wheel.name) != wheel.stat().st_size:
            conn.put(wheel, f"{remote_dir}/{wheel.name}")
    return remote_dir


def prepare(ctx: HostContext, python3: str, requirements: list[str]) -> list[str]:
    """Probe, resolve, ship: the ``pip install`` options for this host's shipped wheels."""
    probe = ctx.conn.check(platform_probe(python3), "reading the host's python platform")
    platform = parse_platform(probe.stdout)
    house = resolve(requirements, platform, cache_dir())
    return install_args(ship(ctx.conn, house, ctx.path(f"wheels/{platform.key}")))


def install_args(remote_dir: str) -> list[str]:
    """``pip install`` options that take packages from the shipped wheels only."""
    return ["--no-index", "--find-links", remote_dir]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
