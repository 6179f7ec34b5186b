"""llama.cpp's official release archives: which one fits a host, and where it comes from.

Releases are tagged ``bNNNN``; the Linux and macOS assets are
``llama-bNNNN-bin-<platform>.tar.gz`` with one top folder ``llama-bNNNN/`` holding
``llama-server`` and its shared libraries as symlink chains (RPATH ``$ORIGIN``), so they are
unpacked with symlinks kept, into ``engines/llama.cpp/<asset>``. llama.cpp publishes no checksum
files: the playbook gives ``sha256:`` (one digest, or one per asset name for a mixed fleet).
There is no Linux CUDA build; a Linux host with a GPU gets the Vulkan build.
"""

from __future__ import annotations

import re

from toolkit.errors import ToolkitError
from toolkit.hosts.facts import Facts

DEFAULT_MIRROR = "https://github.com/ggml-org/llama.cpp/releases/download"
SOURCE_MIRROR = "https://github.com/ggml-org/llama.cpp/archive/refs/tags"
LINUX_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64",
              "s390x": "s390x"}  # fmt: skip
VULKAN_ARCH = ("x64", "arm64")
MACOS_ARCH = {"arm64": "arm64", "x86_64": "x64"}


def build_number(version: object) -> str:
    """``b8770``, ``8770`` → ``b8770``; anything else is refused."""
    text = str(version).strip()
    if not re.fullmatch(r"b?[0-9]+", text):
        raise ToolkitError(
            f"runtimes.llamacpp.version must be a llama.cpp build number like b8770, got {text!r}"
        )
    return text if text.startswith("b") else f"b{text}"


def platform(facts: Facts) -> tuple[str | None, str]:
    """The release platform for this host (``ubuntu-x64``, ``ubuntu-vulkan-x64``,
    ``macos-arm64``...) and why; None when llama.cpp builds none for it."""
    where = f"{facts.os or '?'} {facts.arch or '?'}"
    if facts.termux:
        return None, f"Termux ({where}): its pkg llama-cpp is the build for Android"
    if facts.os == "Linux":
        arch = LINUX_ARCH.get(facts.arch)
        if arch is None:
            return None, f"no Linux release for {facts.arch}"
        if facts.gpus and arch in VULKAN_ARCH:
            return f"ubuntu-vulkan-{arch}", f"GPU ({facts.gpus[0]}): the Vulkan build"
        return f"ubuntu-{arch}", f"Linux {facts.arch}, no GPU: the CPU build"
    if facts.os == "Darwin":
        arch = MACOS_ARCH.get(facts.arch)
        if arch is None:
            return None, f"no macOS release for {facts.arch}"
        return f"macos-{arch}", f"macOS {facts.arch}"
    return None, f"no release for {where}"


def asset_name(build: str, platform_name: str) -> str:
    return f"llama-{build}-bin-{platform_name}.tar.gz"


def release_url(mirror: str | None, build: str, asset: str) -> str:
    return f"{(mirror or DEFAULT_MIRROR).rstrip('/')}/{build}/{asset}"


def source_url(mirror: str | None, build: str) -> str:
    """GitHub's archive of the tag: one top folder ``llama.cpp-bNNNN/``."""
    return f"{(mirror or SOURCE_MIRROR).rstrip('/')}/{build}.tar.gz"


def sha256_for(conf_sha: object, asset: str) -> str:
    """The digest the playbook gives for ``asset``: one string, or a mapping asset -> digest."""
    if isinstance(conf_sha, dict):
        digest = conf_sha.get(asset)
        if digest is None:
            raise ToolkitError(
                f"runtimes.llamacpp.sha256 names no digest for {asset} (it lists "
                f"{', '.join(map(str, conf_sha)) or 'nothing'}); llama.cpp publishes none to "
                "look up"
            )
    else:
        digest = conf_sha
    if not digest:
        raise ToolkitError(
            f"runtimes.llamacpp.sha256 is needed for {asset}: llama.cpp publishes no checksums "
            "(sha256sum the file you trust and write it into the playbook)"
        )
    text = str(digest).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ToolkitError(f"runtimes.llamacpp.sha256 for {asset} is not a sha256: {digest!r}")
    return text
