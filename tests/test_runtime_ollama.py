"""Ollama (``runtime: ollama``): install from a release mirror, pull, import, serve, verify.

Ollama cannot be downloaded here: its release archives are built by tests/runtime_releases.py,
laid out as the real ones, holding a STAND-IN ``bin/ollama`` (tests/ollama_standin.py) that speaks
Ollama's API and answers with real tokens from llama.cpp. toolkit installs it through its real
``release`` path (download, checksum, unpack), runs ``ollama serve``, pulls one model through
``/api/pull`` and imports another from the GGUF it placed, and the openai client reaches both
through the proxy.
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.conftest import GEMMA_SHA256, free_port
from tests.runtime_releases import ReleaseMirror
from tests.runtime_site import RuntimeSite, recap
from toolkit.errors import ConfigError
from toolkit.hosts.facts import Facts
from toolkit.runtimes.ollama import Ollama
from toolkit.site import load_site

VERSION = "0.31.1"
OLD_VERSION = "0.13.1"  # before 0.14: .tgz archives
GGUF_PATH = "/models/gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="module")
def mirror(gemma_gguf):
    with ReleaseMirror() as server:
        library = {"gemma3:270m": str(gemma_gguf), "broken:1b": "fail-midway"}
        server.shas = server.add_ollama(VERSION, library)
        server.add_ollama(OLD_VERSION, library)
        server.add(GGUF_PATH, gemma_gguf.read_bytes())  # a url: source for the import
        yield server


def play(proxy_port: int, runtime: dict, models: list[dict]) -> list[dict]:
    return [
        {
            "name": "ollama",
            "hosts": "all",
            "runtimes": {"ollama": runtime},
            "models": models,
            "proxy": {"port": proxy_port},
        }
    ]


IMPORTED = {
    "name": "gemma-import",
    "runtime": "ollama",
    "source": {"url": None},  # set to the mirror's URL
    "sha256": GEMMA_SHA256,
    "args": {"system": "Answer briefly.", "parameters": {"num_ctx": 2048, "temperature": 0}},
}
PULLED = {"name": "gemma-pulled", "runtime": "ollama", "source": {"ollama": "gemma3:270m"}}


@pytest.fixture(scope="module")
def site(tmp_path_factory, mirror):
    port = free_port()
    imported = {**IMPORTED, "source": {"url": mirror.url + GGUF_PATH}}
    runtime = {"install": "release", "version": VERSION, "mirror": mirror.url}
    ws = RuntimeSite(tmp_path_factory.mktemp("ollama"), play(port, runtime, [imported, PULLED]))
    ws.port = port
    ws.first = ws.apply()
    try:
        yield ws
    finally:
        ws.down()
        ws.kill_leftovers()


def test_release_is_downloaded_checked_and_unpacked(site, mirror):
    out = site.first.stdout + site.first.stderr
    assert site.first.returncode == 0, out
    assert recap(out)[2] == 0
    assert "Ollama: release" in out, out
    gets = [r.path for r in mirror.gets()]
    assert f"/ollama/ollama/releases/download/v{VERSION}/ollama-linux-amd64.tar.zst" in gets
    assert f"/ollama/ollama/releases/download/v{VERSION}/sha256sum.txt" in gets
    install = site.data / f"runtimes/ollama-{VERSION}-amd64"
    assert (install / "bin/ollama").is_file() and (install / "lib/ollama").is_dir()
    record = (install / ".toolkit-archive").read_text().split()
    assert record[1] == mirror.shas["ollama-linux-amd64.tar.zst"]


def test_a_placed_gguf_is_imported_without_a_second_download(site, mirror):
    assert [r.path for r in mirror.gets()].count(GGUF_PATH) == 1
    blobs = site.data / "ollama/models/blobs"
    assert (blobs / f"sha256-{GEMMA_SHA256}").is_file()  # posted from the placed file
    port = ollama_port(site)
    tags = httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=10).json()
    assert {m["name"] for m in tags["models"]} == {"gemma-import:latest", "gemma3:270m"}
    show = httpx.post(f"http://127.0.0.1:{port}/api/show", json={"model": "gemma-import"}).json()
    assert show["system"] == "Answer briefly." and "num_ctx 2048" in show["parameters"]


def ollama_definition(site) -> str:
    return "".join(p.read_text() for p in (site.data / "supervisor").rglob("ollama*.conf"))


def ollama_port(site) -> int:
    return int(re.search(r'OLLAMA_HOST="?127\.0\.0\.1:(\d+)', ollama_definition(site))[1])


def test_routes_name_the_model_as_ollama_knows_it(site):
    routes = (site.data / "proxy/routes.yml").read_text()
    assert re.search(r"runtime: \"?ollama\"?, model: \"?gemma3:270m\"?", routes), routes
    assert re.search(r"model: \"?gemma-import:latest\"?", routes), routes
    definition = ollama_definition(site)
    assert f'OLLAMA_MODELS="{site.data}/ollama/models"' in definition, definition
    assert "127.0.0.1:" in definition


def test_openai_client_reaches_both_models_through_the_proxy(site):
    out = site.first.stdout
    for name in ("gemma-import", "gemma-pulled"):
        assert re.search(rf"verified\s+{name}: answered", out), out
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{site.port}/v1", api_key="unused")
    assert {"gemma-import", "gemma-pulled"} <= {m.id for m in client.models.list().data}
    for name in ("gemma-import", "gemma-pulled"):
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8, temperature=0,
        )  # fmt: skip
        assert reply.choices[0].message.content.strip()


def test_second_apply_pulls_nothing_and_changes_nothing(site, mirror):
    before = len(mirror.gets())
    again = site.apply()
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap(again.stdout)[1] == 0, again.stdout
    assert len(mirror.gets()) == before  # neither the archive nor the model fetched again


def test_each_host_whose_pull_fails_fails_with_ollamas_own_words(tmp_path, mirror):
    """Two hosts (two data dirs on this machine), converged in parallel: one pulls a model whose
    download breaks off, the other one Ollama's library does not have. Each fails with Ollama's
    own message, neither stops the other."""
    hosts = {
        "midway": {"pull_name": "broken:1b", "proxy_port": free_port(), "ollama_port": free_port()},
        "unknown": {"pull_name": "nope:1b", "proxy_port": free_port(), "ollama_port": free_port()},
    }
    runtime = {"install": "release", "version": VERSION, "mirror": mirror.url,
               "port": "{{ ollama_port }}"}  # fmt: skip
    model = {"name": "m", "runtime": "ollama", "source": {"ollama": "{{ pull_name }}"}}
    plays = play(0, runtime, [model])
    plays[0]["proxy"]["port"] = "{{ proxy_port }}"
    ws = RuntimeSite(tmp_path, plays, hosts=hosts)
    try:
        result = ws.apply()
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert re.search(r"midway: FAILED: .*broken:1b.*max retries exceeded: unexpected EOF", out)
        assert re.search(r"unknown: FAILED: .*pull model manifest: file does not exist", out), out
        assert recap(out, "midway")[2] == 1 and recap(out, "unknown")[2] == 1
    finally:
        ws.down()
        ws.kill_leftovers()


def test_archive_with_another_sha256_is_refused_and_nothing_is_unpacked(tmp_path, mirror):
    runtime = {"install": "release", "version": VERSION, "mirror": mirror.url, "sha256": "0" * 64}
    ws = RuntimeSite(tmp_path, play(free_port(), runtime, [PULLED]))
    try:
        result = ws.apply()
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert mirror.shas["ollama-linux-amd64.tar.zst"] in out and "0" * 64 in out, out
        assert not list(ws.data.glob("runtimes/ollama*")), list(ws.data.glob("runtimes/*"))
    finally:
        ws.down()
        ws.kill_leftovers()


def test_mirror_without_the_release_names_the_url_and_the_key(tmp_path, mirror):
    runtime = {"install": "release", "version": "9.9.9", "mirror": mirror.url}
    ws = RuntimeSite(tmp_path, play(free_port(), runtime, [PULLED]))
    try:
        result = ws.apply()
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert f"{mirror.url}/ollama/ollama/releases/download/v9.9.9/" in out, out
        assert "404" in out and "runtimes.ollama.mirror" in out, out
    finally:
        ws.down()
        ws.kill_leftovers()


@pytest.mark.parametrize(
    "arch, version, asset",
    [
        ("x86_64", VERSION, "ollama-linux-amd64.tar.zst"),
        ("aarch64", VERSION, "ollama-linux-arm64.tar.zst"),
        ("x86_64", OLD_VERSION, "ollama-linux-amd64.tgz"),
    ],
)
def test_release_asset_follows_arch_and_version(arch, version, asset):
    from toolkit.site import RuntimeSpec

    spec = RuntimeSpec("ollama", "release", {"version": version, "mirror": "http://m:1/"})
    install = Ollama().resolve(spec, Facts(os="Linux", arch=arch), "/d")
    (archive,) = install.resources
    assert archive.release.url == f"http://m:1/ollama/ollama/releases/download/v{version}/{asset}"
    assert archive.release.checksums_url.endswith(f"/v{version}/sha256sum.txt")


def test_old_tgz_release_installs_and_reports_its_version(tmp_path, mirror):
    """A release before 0.14 comes as .tgz; it is unpacked the same way."""
    runtime = {"install": "release", "version": OLD_VERSION, "mirror": mirror.url}
    ws = RuntimeSite(tmp_path, play(free_port(), runtime, [PULLED]))
    try:
        result = ws.apply("--check")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "ollama-linux-amd64.tgz" in result.stdout, result.stdout
    finally:
        ws.kill_leftovers()


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("Gemma 3:270m", '"gemma-3:270m"'),
        ("gemma3:270m:q4", '"gemma3:270m-q4"'),
    ],
)
def test_ollama_name_that_is_not_name_tag_is_refused(tmp_path, name, fragment):
    import yaml

    plays = play(8080, {"install": "release"}, [{**PULLED, "source": {"ollama": name}}])
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(plays))
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n")
    with pytest.raises(ConfigError) as caught:
        load_site(path, tmp_path / "hosts.yml")
    message = str(caught.value)
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", message), message
    assert "name[:tag]" in message and fragment in message, message


def test_ollama_args_are_checked(tmp_path):
    import yaml

    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    model = {**IMPORTED, "source": {"path": str(tmp_path / "x.gguf")}, "args": {"sytem": "x"}}
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(play(8080, {}, [model])))
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n")
    with pytest.raises(ConfigError) as caught:
        load_site(path, tmp_path / "hosts.yml")
    assert 'unknown key "sytem"' in str(caught.value) and "system" in str(caught.value)


def test_standin_blob_digest_mismatch_is_a_400(site):
    port = ollama_port(site)
    answer = httpx.post(f"http://127.0.0.1:{port}/api/blobs/sha256:{'0' * 64}", content=b"x")
    assert answer.status_code == 400 and "digest mismatch" in answer.json()["error"]


def test_auto_uses_an_ollama_on_path_and_downloads_nothing():
    from toolkit.site import RuntimeSpec

    facts = Facts(os="Linux", arch="x86_64", binaries={"ollama": "/usr/local/bin/ollama"})
    install = Ollama().resolve(RuntimeSpec("ollama", "auto", {}), facts, "/d")
    assert install.strategy == "present" and "/usr/local/bin/ollama" in install.reason
    assert install.resources == []  # nothing to install (not root under systemd: no user)


def test_package_is_termux_pkg_and_refused_elsewhere():
    from toolkit.errors import ToolkitError
    from toolkit.resources.packages import Packages
    from toolkit.site import RuntimeSpec

    phone = Facts(termux=True, arch="aarch64", prefix="/data/data/com.termux/files/usr")
    install = Ollama().resolve(RuntimeSpec("ollama", "auto", {}), phone, "/d")
    assert install.strategy == "package" and install.reason == "Termux package ollama"
    (packages,) = [r for r in install.resources if isinstance(r, Packages)]
    assert (packages.manager, packages.names) == ("pkg", ["ollama"])
    assert install.details["binary"] == "/data/data/com.termux/files/usr/bin/ollama"
    server = Facts(os="Linux", distro="debian", distro_version="12", arch="x86_64")
    with pytest.raises(ToolkitError, match="packages have no Ollama: use install: release"):
        Ollama().resolve(RuntimeSpec("ollama", "package", {}), server, "/d")
