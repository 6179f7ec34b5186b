"""llama.cpp from the host's own packages: which package, if the distribution has one.

- Termux: ``pkg install llama-cpp`` (main repository; built for aarch64 and x86_64 only) ships
  ``$PREFIX/bin/llama-server``.
- Debian 13 (trixie) and sid: ``llama.cpp``; Ubuntu 26.04 and later: ``llama.cpp-tools``; both
  ship ``/usr/bin/llama-server``. Their GPU backends are separate packages that the CPU one only
  suggests: a plain install is CPU-only.
- macOS: Homebrew's ``llama.cpp``.
Decided from the facts; elsewhere there is none, and the error says which facts decided it.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.hosts.facts import Facts

TERMUX_ARCHES = ("aarch64", "x86_64")
BREW_BIN = {"arm64": "/opt/homebrew/bin", "x86_64": "/usr/local/bin"}


@dataclass(frozen=True)
class SystemPackage:
    manager: str  # "pkg" | "apt" | "brew"
    name: str
    server: str  # where its llama-server is
    reason: str


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()


def system_package(facts: Facts) -> tuple[SystemPackage | None, str]:
    """The package that provides llama-server on this host, or None and the facts why not."""
    if facts.termux:
        if facts.arch not in TERMUX_ARCHES:
            return None, f"Termux on {facts.arch}: llama-cpp is built for aarch64 and x86_64 only"
        return SystemPackage(
            "pkg", "llama-cpp", f"{facts.prefix}/bin/llama-server", "Termux: pkg llama-cpp"
        ), ""
    if facts.distro == "debian":
        version = _version(facts.distro_version)
        if not facts.distro_version or version >= (13,):  # sid/testing have no VERSION_ID
            label = f"Debian {facts.distro_version or 'sid'}"
            return SystemPackage(
                "apt", "llama.cpp", "/usr/bin/llama-server", f"{label}: apt llama.cpp"
            ), ""
        return None, f"Debian {facts.distro_version} packages no llama.cpp (Debian 13 and sid do)"
    if facts.distro == "ubuntu":
        if _version(facts.distro_version) >= (26, 4):
            return SystemPackage(
                "apt", "llama.cpp-tools", "/usr/bin/llama-server",
                f"Ubuntu {facts.distro_version}: apt llama.cpp-tools",
            ), ""  # fmt: skip
        return None, f"Ubuntu {facts.distro_version} packages no llama-server (26.04 and later do)"
    if facts.os == "Darwin":
        where = BREW_BIN.get(facts.arch)
        if where is None:
            return None, f"macOS on {facts.arch}: no Homebrew bottle"
        return SystemPackage(
            "brew", "llama.cpp", f"{where}/llama-server", "macOS: brew llama.cpp"
        ), ""
    what = " ".join(p for p in (facts.distro, facts.distro_version) if p) or facts.os or "this OS"
    return None, f"{what} ({facts.arch}) packages no llama.cpp"
