"""llama.cpp built from a pinned source archive on the host, with flags from its facts.

Flags: CUDA when ``nvcc`` is on PATH and the facts see an NVIDIA GPU (a CUDA build without one
takes hours for nothing), Vulkan when its SDK's shader compiler ``glslc`` is, Metal on
macOS; on Linux the CPU code is always portable (``GGML_NATIVE=OFF``, every CPU variant built as
a loadable backend and the best one picked at run time, as llama.cpp's own release builds do): a
native build dies with SIGILL on virtual machines whose CPU advertises features the hypervisor
does not allow (see FACTS.md).

Built once per (version, flags): the result is installed into
``engines/llama.cpp/<version>-<flags digest>`` only when the build succeeded (a ``.partial``
directory renamed at the end), with a record the probe reads, so a second apply builds nothing.
cmake's build directory is kept beside the sources for the next try to continue from, and is
never used as the result. A failed build shows the last 30 lines of its log.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.hosts.facts import Facts
from toolkit.resources.base import Change, HostContext, Resource, RunOptions

RECORD = ".toolkit-build"
LOG_TAIL = 30  # lines of the build log shown when it fails
BUILD_TIMEOUT_S = 4 * 3600  # a CUDA build with every architecture takes hours on small hosts
TARGETS = ("llama-server", "llama-bench")

COMMON = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    # toolkit places model files itself: no HTTPS downloads in the engine (no libssl/libcurl
    # headers needed; LLAMA_CURL is what older tags call it)
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
]
# The build's binaries and libraries all land in <build>/bin; they are copied out, so they find
# each other (and the CPU backends) next to themselves, not in the build tree.
RPATH = {"Darwin": "@loader_path"}
PORTABLE_CPU = ["-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"]
VARIANT_ARCHES = ("x86_64", "amd64", "aarch64", "arm64")  # where llama.cpp has CPU variants


@dataclass(frozen=True)
class BuildPlan:
    """What a source build on one host will be: its backend, why, and cmake's flags."""

    backend: str  # "cuda" | "vulkan" | "metal" | "cpu"
    reason: str
    flags: tuple[str, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.flags).encode()).hexdigest()[:12]


def build_plan(facts: Facts, extra: list[str] | None = None) -> BuildPlan:
    """cmake's flags for this host, and why; ``extra`` (the playbook's ``cmake_flags``) come
    last, so they win."""
    plan = _plan(facts)
    if not extra:
        return plan
    return BuildPlan(plan.backend, f"{plan.reason}; with {' '.join(extra)}", (*plan.flags, *extra))


def _plan(facts: Facts) -> BuildPlan:
    rpath = RPATH.get(facts.os, "$ORIGIN")
    common = [*COMMON, f"-DCMAKE_INSTALL_RPATH={rpath}", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"]
    if facts.os == "Darwin":
        return BuildPlan("metal", "macOS: Metal", (*common, "-DGGML_METAL=ON"))
    cpu = list(PORTABLE_CPU) if facts.arch in VARIANT_ARCHES else ["-DGGML_NATIVE=OFF"]
    nvcc = facts.binaries.get("nvcc")
    if nvcc and any(gpu.startswith("nvidia") for gpu in facts.gpus):
        return BuildPlan("cuda", f"CUDA (nvcc at {nvcc})", (*common, *cpu, "-DGGML_CUDA=ON"))
    if facts.binaries.get("glslc"):
        return BuildPlan(
            "vulkan",
            f"Vulkan (glslc at {facts.binaries['glslc']})",
            (*common, *cpu, "-DGGML_VULKAN=ON"),
        )
    what = "CPU variants chosen at run time" if cpu == PORTABLE_CPU else "portable CPU"
    why = "nvcc but no NVIDIA GPU" if nvcc else "no nvcc or glslc"
    return BuildPlan("cpu", f"{why}: {what}", (*common, *cpu))


def configure_argv(source: str, build: str, plan: BuildPlan) -> list[str]:
    return ["cmake", "-S", source, "-B", build, *plan.flags]


def build_argv(build: str, jobs: int) -> list[str]:
    return ["cmake", "--build", build, "--config", "Release", "-j", str(max(1, jobs)),
            "--target", *TARGETS]  # fmt: skip


# What provides cmake and a C++ compiler, per package manager.
BUILD_DEPS = {
    "apt": ["cmake", "g++", "make"],
    "pkg": ["cmake", "clang", "make"],
    "brew": ["cmake"],  # the compiler comes with Xcode's command line tools
}


def missing_build_tools(facts: Facts) -> list[str]:
    """cmake and a C++ compiler, as the facts found them (nothing when both are there)."""
    missing = [] if facts.binaries.get("cmake") else ["cmake"]
    if not (
        facts.binaries.get("c++") or facts.binaries.get("g++") or facts.binaries.get("clang++")
    ):
        missing.append("a C++ compiler")
    return missing


class SourceBuild(Resource):
    """llama.cpp at ``source`` (unpacked by an Archive) built with ``plan`` into ``dest``."""

    def __init__(self, version: str, source: str, plan: BuildPlan, jobs: int):
        self.version = version
        self.source = source  # relative to the data dir
        self.plan_ = plan
        self.jobs = jobs
        self.key = f"{version}-{plan.backend}-{plan.digest}"
        self.dest = f"engines/llama.cpp/{self.key}"
        self.build_dir = f"build/llama.cpp/{self.key}"
        self.id = f"build:llama.cpp:{self.key}"
        self.record = f"{version} {plan.digest}"

    @property
    def server(self) -> str:
        """The path of the built llama-server, relative to the data dir."""
        return f"{self.dest}/llama-server"

    def probe(self, options: RunOptions) -> str:
        return f'cat "$TK_DATA"/{quote(self.dest)}/{RECORD} 2>/dev/null'

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        if observed.strip() == self.record:
            return None
        return Change(self, f"build llama.cpp {self.version} ({self.plan_.backend}) with cmake")

    def apply(self, change: Change, ctx: HostContext) -> None:
        result = ctx.conn.run(self.script(ctx.data_dir), timeout=BUILD_TIMEOUT_S)
        if not result.ok:
            tail = "\n".join(f"  {line}" for line in result.stderr.splitlines()[-LOG_TAIL:])
            raise ToolkitError(
                f"building llama.cpp {self.version} failed (exit {result.rc}); the last "
                f"{LOG_TAIL} lines of {ctx.path(self.build_dir)}.log:\n{tail}"
            )

    def script(self, data_dir: str) -> str:
        source, build = f"{data_dir}/{self.source}", f"{data_dir}/{self.build_dir}"
        dest = f"{data_dir}/{self.dest}"
        log = f"{build}.log"
        configure = " ".join(quote(a) for a in configure_argv(source, build, self.plan_))
        compile_ = " ".join(quote(a) for a in build_argv(build, self.jobs))
        partial = quote(f"{dest}.partial")
        return (
            f"mkdir -p {quote(build)} || exit 1\n"
            f"{{ {configure} && {compile_}; }} > {quote(log)} 2>&1 || "
            f"{{ rc=$?; tail -n {LOG_TAIL} {quote(log)} >&2; exit $rc; }}\n"
            "set -e\n"
            f"rm -rf {partial}; mkdir -p {partial}\n"
            # the programs and every shared library / loadable backend, symlinks as symlinks
            f"cd {quote(build)}/bin\n"
            f"for f in {' '.join(TARGETS)} *.so *.so.* *.dylib; do "
            f'[ -e "$f" ] || [ -L "$f" ] || continue; cp -P "$f" {partial}/; done\n'
            f"{partial}/llama-server --version >/dev/null 2>&1 || "
            "{ echo 'the built llama-server does not start' >&2; exit 1; }\n"
            f"printf '%s\\n' {quote(self.record)} > {partial}/{RECORD}\n"
            f"rm -rf {quote(dest)}; mv {partial} {quote(dest)}\n"
        )
