"""llama.cpp: how it is installed on a host and how its server is started for a model.

Strategies:
- ``present``: a ``llama-server`` already there (on PATH or at ``path:``);
- ``pip``: the prebuilt ``xllamacpp`` wheel (llama.cpp's own server, compiled; CPU, x86_64 and
  aarch64 Linux) in toolkit's virtualenv, started through ``xllamacpp_server.py``, which takes
  llama-server's flags;
- ``package``: the host's own package (Termux ``llama-cpp``, Debian/Ubuntu, Homebrew), see
  ``llamacpp_package.py``;
- ``release``: llama.cpp's official archive for the host (``version:``, ``sha256:``,
  ``mirror:``), see ``llamacpp_release.py``;
- ``source``: a cmake build of the pinned source archive with flags from the facts (CUDA,
  Vulkan, Metal, portable CPU), see ``llamacpp_build.py``.
``auto`` picks, in order: present; package on Termux; pip on x86_64/aarch64 Linux without a
GPU; source on a GPU host whose playbook pins a version; a package where the distribution has
one; pip. The facts line says which and why.

On a host without internet (``offline``) the archive of ``release`` and ``source`` and the wheel
of ``pip`` come from the workstation as always; what the host's package manager would fetch
(``package``, a source build's missing cmake and compiler) is refused unless it is already
installed, and ``auto`` passes over those strategies (the facts line says so).

One ``llama-server`` per model, on its own port; health on ``/health`` (503 while loading).
On a phone (Termux) the engine gets the phone's core count as threads and a small context unless
the playbook sets them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import ToolkitError
from toolkit.models.gguf import system_role_supported
from toolkit.models.metadata import model_info
from toolkit.offline import OfflineRefused
from toolkit.resources.archive import Archive, Release
from toolkit.resources.files import File
from toolkit.resources.packages import Packages
from toolkit.runtimes.base import Install, Ports, Runtime, Served
from toolkit.runtimes.llamacpp_build import BUILD_DEPS, SourceBuild, build_plan, missing_build_tools
from toolkit.runtimes.llamacpp_package import system_package
from toolkit.runtimes.llamacpp_release import (
    asset_name,
    build_number,
    platform,
    release_url,
    sha256_for,
    source_url,
)
from toolkit.schema import Key
from toolkit.services.definition import Service

if TYPE_CHECKING:
    from toolkit.hosts.facts import Facts
    from toolkit.positions import PosDict
    from toolkit.resources.model import ModelFile
    from toolkit.site import ModelSpec, RuntimeSpec

SHIM = Path(__file__).with_name("xllamacpp_server.py")
SHIM_RELPATH = "bin/xllamacpp_server.py"
HEALTH_PATH = "/health"  # 503 while loading, 200 when ready
SERVER = "llama-server"
PIP_ARCHES = ("x86_64", "amd64", "aarch64", "arm64")  # where the xllamacpp wheel exists (Linux)
PHONE_CTX_SIZE = 2048  # a phone's memory: llama.cpp's default is the model's whole context
BUILD_TOOLS = ("nvcc", "glslc", "cmake", "c++", "g++", "clang++")  # what source builds look for


def engine_service_name(model: ModelSpec) -> str:
    return "engine-" + re.sub(r"[^A-Za-z0-9-]", "-", model.name)


class LlamaCpp(Runtime):
    name = "llamacpp"
    # one engine per model; with --metrics it counts the requests it runs and those queued
    in_flight_gauges = ("llamacpp:requests_processing", "llamacpp:requests_deferred")
    label = "llama.cpp"
    strategies = ("auto", "present", "pip", "package", "release", "source")
    keys = {
        "path": Key((str,)),  # present: this llama-server
        "version": Key((str, int)),  # release/source: the build number, b8770
        "sha256": Key((str, dict)),  # release/source: one digest, or asset name -> digest
        "mirror": Key((str,)),  # release/source: base URL instead of GitHub's
        # source: install cmake and a compiler with the host's package manager, or fail
        "build_deps": Key((str,), choices=("install", "fail")),
        "cmake_flags": Key((list,)),  # source: more -D flags, after toolkit's (they win)
    }
    args = {
        "ctx_size": Key((int,)),
        "parallel": Key((int,)),
        "n_gpu_layers": Key((int,)),
        "threads": Key((int,)),
        "chat_template": Key((str,)),
        "jinja": Key((bool,)),
        "embedding": Key((bool,)),
        "pooling": Key((str,), choices=("none", "mean", "cls", "last", "rank")),
        "extra": Key((list,)),
    }
    binaries = (SERVER, *BUILD_TOOLS)
    # smallest value of each numeric arg (ctx_size 0: the model's own trained context)
    minimums = {"ctx_size": 0, "parallel": 1, "threads": 1, "n_gpu_layers": -1}

    def check_model(self, model: ModelSpec, conf: PosDict) -> None:
        args = conf.get("args") or {}
        for key, least in self.minimums.items():
            if key in args and args[key] < least:
                raise args.vpos_of(key).error(
                    f'{key} of model "{model.name}" must be at least {least}, got {args[key]}'
                )
        info = model_info(model.sha256)
        trained = info.context_length if info else None
        if trained and args.get("ctx_size", 0) > trained:
            raise args.vpos_of("ctx_size").error(
                f'ctx_size of model "{model.name}" is {args["ctx_size"]}, beyond the '
                f"{trained} tokens it was trained for (its GGUF says so); use at most {trained}"
            )

    def resolve(
        self, spec: RuntimeSpec, facts: Facts, data_dir: str, offline: bool = False
    ) -> Install:
        conf = spec.conf
        found = conf.get("path") or facts.binaries.get(SERVER)
        package, no_package = system_package(facts)
        if offline and package is not None and not _is(package, found):
            if spec.install == "package":
                raise OfflineRefused(
                    f"llama.cpp install: package runs {package.manager} install {package.name}, "
                    "which needs the host's internet; use install: pip (its wheel is shipped from "
                    "the workstation) or release, or install the package on the host first"
                )
            package = None  # auto: not a strategy that works here
        install = self._strategy(spec.install, facts, found, package, conf, offline)
        if install is None and offline:
            raise OfflineRefused(
                f"llama.cpp: no install strategy works here without the host's internet "
                f"({host_line(facts)}); install: release (version: and sha256:; the archive is "
                "shipped from the workstation) or present would"
            )
        if install is None:
            raise ToolkitError(
                f"llama.cpp: no install strategy fits this host ({host_line(facts)}); "
                f"{would_work(facts, found)}"
            )
        if facts.termux:
            install.details["defaults"] = {"threads": facts.cpus or 4, "ctx_size": PHONE_CTX_SIZE}
        return install

    def _strategy(self, wanted, facts, found, package, conf, offline=False) -> Install | None:
        data_dir = facts.data_dir
        if wanted == "present" or (wanted == "auto" and found and not _is(package, found)):
            if not found:
                raise ToolkitError(
                    "llama.cpp install: present, but no llama-server on PATH; set "
                    "runtimes.llamacpp.path or use install: pip"
                )
            where = "at path:" if conf.get("path") else "on PATH"
            return Install("present", f"llama-server {where} {found}", details={"server": [found]})
        if wanted == "package" or (
            wanted == "auto" and package and (facts.termux or _is(package, found))
        ):
            if package is None:
                raise ToolkitError(
                    f"llama.cpp install: package, but {system_package(facts)[1]} "
                    f"({host_line(facts)}); {would_work(facts, found)}"
                )
            return Install(
                "package",
                package.reason + (" (installed)" if _is(package, found) else ""),
                resources=[Packages(package.manager, [package.name])],
                details={"server": [package.server]},
            )
        pip_fits = facts.os == "Linux" and not facts.termux and facts.arch in PIP_ARCHES
        if wanted == "pip" or (wanted == "auto" and pip_fits and not facts.gpus):
            why = "asked for" if wanted == "pip" else f"{facts.arch} Linux without a GPU"
            return self._pip(data_dir, why)
        if wanted == "release":
            return self._release(facts, conf)
        # offline, a build whose tools the package manager would fetch is not one auto picks
        buildable = not offline or not missing_build_tools(facts)
        if wanted == "source" or (
            wanted == "auto" and facts.gpus and conf.get("version") and buildable
        ):
            return self._source(facts, conf, offline)
        if wanted == "auto" and package is not None:
            return Install(
                "package", package.reason, resources=[Packages(package.manager, [package.name])],
                details={"server": [package.server]},
            )  # fmt: skip
        if wanted == "auto" and pip_fits:
            why = (
                "offline, and the source build would need cmake and a compiler from the internet"
                if conf.get("version")
                else "no version: to build from source"
            )
            return self._pip(data_dir, f"GPU ({facts.gpus[0]}) but {why}; the CPU wheel")
        return None

    def _pip(self, data_dir: str, why: str) -> Install:
        shim = File(SHIM_RELPATH, lambda ctx: SHIM.read_bytes())
        return Install(
            "pip",
            f"xllamacpp wheel in toolkit's virtualenv ({why})",
            pip=["xllamacpp"],
            files=[shim],
            details={"server": [f"{data_dir}/venv/bin/python", f"{data_dir}/{SHIM_RELPATH}"]},
        )

    def _release(self, facts: Facts, conf: dict) -> Install:
        build = build_number(_required(conf, "version", "release"))
        name, why = platform(facts)
        if name is None:
            raise ToolkitError(
                f"llama.cpp install: release, but {why} ({host_line(facts)}); "
                f"{would_work(facts, None)}"
            )
        asset = asset_name(build, name)
        url = release_url(conf.get("mirror"), build, asset)
        dest = f"engines/llama.cpp/{asset.removesuffix('.tar.gz')}"
        archive = Archive(
            Release(url, sha256_for(conf.get("sha256"), asset),
                    fix_hint="fix runtimes.llamacpp.version or mirror"),
            dest, strip=1,
        )  # fmt: skip
        return Install(
            "release",
            f"{asset} ({why})",
            resources=[archive],
            details={"server": [f"{facts.data_dir}/{dest}/llama-server"]},
        )

    def _source(self, facts: Facts, conf: dict, offline: bool = False) -> Install:
        build = build_number(_required(conf, "version", "source"))
        url = source_url(conf.get("mirror"), build)
        filename = url.rsplit("/", 1)[-1]
        source = f"src/llama.cpp-{build}"
        archive = Archive(
            Release(url, sha256_for(conf.get("sha256"), filename),
                    fix_hint="fix runtimes.llamacpp.version or mirror"),
            source, strip=1,
        )  # fmt: skip
        resources = [archive, *build_tools(facts, conf.get("build_deps", "fail"), offline)]
        plan = build_plan(facts, [str(flag) for flag in conf.get("cmake_flags") or []])
        built = SourceBuild(build, source, plan, jobs=facts.cpus or 1)
        resources.append(built)
        return Install(
            "source",
            f"{build} built here: {plan.reason}",
            resources=resources,
            details={"server": [f"{facts.data_dir}/{built.server}"]},
        )

    def capabilities(self, model: ModelSpec) -> dict:
        return model_capabilities(model)

    def serve(self, install, models, ports: Ports, data_dir: str) -> list[Served]:
        served = []
        defaults = install.details.get("defaults") or {}
        for model, placed in models:
            if defaults:  # the host's defaults (a phone's) where the playbook sets none
                model = replace(model, args={**defaults, **model.args})
            port = ports.take(model.port)
            service = Service(
                name=engine_service_name(model),
                description=f"llama.cpp serving {model.name}",
                argv=server_argv(install.details["server"], model, _path(placed, data_dir), port),
                workdir=data_dir,
                health_url=f"http://127.0.0.1:{port}{HEALTH_PATH}",
                inputs=[placed.id] if placed else [],
            )
            served.append(
                Served(
                    model,
                    port,
                    service,
                    backend={"url": f"http://127.0.0.1:{port}", "runtime": self.name},
                    verify="embedding" if model.args.get("embedding") else "chat",
                )
            )
        return served


def _path(placed: ModelFile | None, data_dir: str) -> str:
    assert placed is not None, "llama.cpp serves files toolkit placed"
    return f"{data_dir}/{placed.relpath}"


def model_capabilities(model: ModelSpec) -> dict:
    """What the proxy should know of the model: the context a request may fill (llama.cpp
    splits ``ctx_size`` between its parallel slots; 0 or unset means the GGUF's trained
    context), and whether the chat template keeps a system message (else the proxy folds it
    into the first user turn). From the GGUF header once the file is in the workstation's store.
    """
    args, info = model.args, model_info(model.sha256)
    found: dict = {}
    context = args.get("ctx_size") or (info.context_length if info else None)
    if context:
        found["max_context"] = context // max(1, args.get("parallel", 1))
    template = args.get("chat_template")
    if template is None:
        known, template = info is not None, info.chat_template if info else None
    else:  # a built-in template name: llama.cpp folds system text itself
        known = "{" in template
    if known and not system_role_supported(template):
        found["system_role"] = False
    return found


def server_argv(server: list[str], model: ModelSpec, model_path: str, port: int) -> list[str]:
    """llama-server's command line for one model; every playbook arg maps to one flag."""
    args = model.args
    argv = [*server, "-m", model_path, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--alias", model.name]
    if "ctx_size" in args:
        argv += ["-c", str(args["ctx_size"])]
    if "parallel" in args:
        argv += ["-np", str(args["parallel"])]
    if "n_gpu_layers" in args:
        argv += ["-ngl", str(args["n_gpu_layers"])]
    if "threads" in args:
        argv += ["-t", str(args["threads"])]
    if args.get("jinja"):
        argv.append("--jinja")
    if "chat_template" in args:
        argv += ["--chat-template", args["chat_template"]]
    if args.get("embedding"):
        # OpenAI clients expect one vector per input: llama.cpp's default pooling for a
        # generative model gives none, so embeddings need a pooling type (mean unless set).
        argv += ["--embedding", "--pooling", args.get("pooling", "mean")]
    elif "pooling" in args:
        argv += ["--pooling", args["pooling"]]
    argv.append("--metrics")
    argv += [str(a) for a in args.get("extra", [])]
    return argv


def _is(package, found: str | None) -> bool:
    """Is the llama-server found the one the host's package installed?"""
    return bool(package and found and found == package.server)


def _required(conf: dict, key: str, strategy: str) -> object:
    value = conf.get(key)
    if value in (None, ""):
        raise ToolkitError(f"llama.cpp install: {strategy} needs runtimes.llamacpp.{key}")
    return value


def host_line(facts: Facts) -> str:
    """The facts that decide which installs fit."""
    parts = [facts.os or "?", facts.arch or "?"]
    if facts.distro:
        parts.append(f"{facts.distro} {facts.distro_version}".strip())
    if facts.termux:
        parts.append("Termux")
    parts.append(f"GPU: {'; '.join(facts.gpus)}" if facts.gpus else "no GPU")
    return ", ".join(parts)


def would_work(facts: Facts, found: str | None) -> str:
    """The strategies that would work on this host, for an error message."""
    fits = []
    if found:
        fits.append("present")
    if system_package(facts)[0] is not None:
        fits.append("package")
    if facts.os == "Linux" and not facts.termux and facts.arch in PIP_ARCHES:
        fits.append("pip")
    if platform(facts)[0] is not None:
        fits.append("release (with version: and sha256:)")
    fits.append("source (with version: and sha256:)")
    return "install: " + " or ".join(fits) + " would work here"


def build_tools(facts: Facts, build_deps: str, offline: bool = False) -> list[Packages]:
    """cmake and a C++ compiler for a source build: installed when the playbook allows it
    (``build_deps: install``) and the host has internet, else the host is refused naming what
    to install."""
    missing = missing_build_tools(facts)
    if not missing:
        return []
    if offline:
        raise OfflineRefused(
            f"llama.cpp install: source needs {' and '.join(missing)} on the host, and its "
            "package manager would need the internet to install them; install them on the host "
            "first, or use install: release or pip (shipped from the workstation)"
        )
    manager = (
        "pkg" if facts.termux
        else "brew" if facts.os == "Darwin"
        else "apt" if facts.distro in ("debian", "ubuntu")
        else None
    )  # fmt: skip
    names = BUILD_DEPS.get(manager or "", [])
    if build_deps == "install" and manager:
        return [Packages(manager, names)]
    how = f"{manager} install {' '.join(names)}" if manager else "install cmake and a C++ compiler"
    raise ToolkitError(
        f"llama.cpp install: source needs {' and '.join(missing)} on the host: {how}"
        + (", or set runtimes.llamacpp.build_deps: install" if manager else "")
    )
