"""A wheelhouse: the hosts' virtualenv requirements resolved once per platform on the workstation.

Without it every host runs its own ``pip install`` against the package index: the same downloads
once per host, and nothing at all on a host without internet. With it the workstation runs
``pip download`` once per (Python version, machine, libc) into toolkit's cache, for the host's
platform rather than its own (``--platform``, ``--python-version``, binary wheels only); a host
never reaches an index. ``resources/venv_bundle.py`` turns the wheels into what is shipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError

_PIP_TIMEOUT_S = 1800
_MANIFEST = "requirements.txt"
_OLDEST_MANYLINUX_MINOR = (
    17  # manylinux2014 = manylinux_2_17; PyPI serves nothing older that matters
)

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

    Each set gets a folder of its own (``<platform>/<digest of the set>``) holding exactly the
    wheels pip chose for it, and a manifest written once they are all there: two sets never
    mix their versions of a package. One lock per folder keeps parallel host applies from
    resolving the same set twice.
    """
    wanted = tuple(sorted(requirements))
    listing = "\n".join(wanted) + "\n"
    digest = hashlib.sha256(listing.encode()).hexdigest()[:16]
    path = cache / "wheelhouse" / platform.key / digest
    path.mkdir(parents=True, exist_ok=True)
    manifest = path / _MANIFEST
    with locked(path / ".lock"):
        if manifest.is_file() and manifest.read_text() == listing:
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
        manifest.write_text(listing)
    return Wheelhouse(path, platform, wanted)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
