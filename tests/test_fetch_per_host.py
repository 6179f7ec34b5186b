"""``fetch: per_host``: a host downloads its model itself, verified, and the workstation does not.

Real parts: a real OpenSSH host of the loopback bed (tests/sshbed.py), real HTTP servers (the
file server and the Hub stand-in of tests/hf_standin.py) the host's own curl or python3 reaches,
the model resource run as apply runs it (its probe inside the engine's probe script, then plan,
then apply), and the playbook read by the real loader. No engine is started: placing a model
does not need one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest

from tests.hf_standin import FileServer, HubStandIn
from toolkit.engine import probe_script, split_probe
from toolkit.errors import ConfigError, ToolkitError
from toolkit.hosts.facts import parse_facts
from toolkit.hosts.ssh import SSHConnection
from toolkit.inventory import Host
from toolkit.resources.base import HostContext, RunOptions
from toolkit.resources.model import ModelFile, model_relpath
from toolkit.site import ModelSpec, load_playbook, load_site

DATA = os.urandom(3 << 20) + b"model"
SHA = hashlib.sha256(DATA).hexdigest()
OTHER_SHA = hashlib.sha256(b"some other model").hexdigest()
TOKEN = "hf_perhosttoken_" + "y" * 20


class RecordingConnection:
    """The host's real SSH connection, keeping every script sent (to look for the token), and
    optionally a PATH without curl, so the host's python3 downloads instead."""

    def __init__(self, conn: SSHConnection, path: str | None = None):
        self.conn, self.path, self.scripts = conn, path, []

    def run(self, script: str, **kwargs):
        if self.path:
            script = f"PATH={self.path}; export PATH\n{script}"
        self.scripts.append(script)
        return self.conn.run(script, **kwargs)

    def check(self, script: str, what: str, **kwargs):
        from toolkit.hosts.connection import CommandFailed

        result = self.run(script, **kwargs)
        if not result.ok:
            raise CommandFailed(what, result)
        return result


@pytest.fixture
def host(ssh_hosts) -> Iterator[tuple[SSHConnection, str]]:
    """An SSH connection to a bed host, and a data dir of this test's own on it."""
    bed_host = ssh_hosts[0]
    conn = bed_host.connect()
    data_dir = str(bed_host.home / f"perhost-{secrets.token_hex(4)}")
    try:
        yield conn, data_dir
    finally:
        conn.run(f"rm -rf {data_dir}", timeout=60)
        conn.close()


@pytest.fixture
def workstation_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture
def hub(monkeypatch) -> Iterator[HubStandIn]:
    with HubStandIn() as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
        yield standin


def model_from_playbook(tmp_path: Path, text: str) -> ModelSpec:
    playbook = tmp_path / "site.yml"
    playbook.write_text(textwrap.dedent(text))
    return load_playbook(playbook)[0].models[0]


def url_model(tmp_path: Path, url: str, sha256: str) -> ModelSpec:
    return model_from_playbook(
        tmp_path,
        f"""\
        - hosts: all
          fetch: per_host
          runtimes: {{llamacpp: {{}}}}
          models:
            - name: tiny
              runtime: llamacpp
              source: {{url: "{url}"}}
              sha256: {sha256}
        """,
    )


def converge(conn, data_dir: str, model: ModelSpec, host_vars: dict | None = None):
    """Probe, plan and apply the model on the host as apply does; returns the change (or None)
    and the progress the host reported."""
    resource = ModelFile(model)
    out = conn.run(probe_script(data_dir, [resource], RunOptions()), timeout=120)
    facts_text, observed = split_probe(out.stdout)
    seen: list[tuple[int, int | None]] = []
    ctx = HostContext(
        host=Host("bedhost", {}, ["bed"]),
        play=None,
        conn=conn,
        facts=parse_facts(facts_text),
        data_dir=data_dir,
        vars=host_vars or {},
        options=RunOptions(),
        progress=lambda label: lambda done, total: seen.append((done, total)),
    )
    change = resource.plan(observed.get(0, ""), ctx, set())
    if change is not None:
        conn.run(f"mkdir -p {data_dir}", timeout=60)
        resource.apply(change, ctx)
    return change, seen


def placed(data_dir: str, model: ModelSpec) -> Path:
    return Path(data_dir) / model_relpath(model)


def store_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def test_the_host_downloads_verifies_and_a_second_run_changes_nothing(
    host, files, workstation_cache, tmp_path
):
    conn, data_dir = host
    model = url_model(tmp_path, files.add("/tiny.gguf", DATA), SHA)
    assert model.fetch == "per_host"  # from the play
    change, _ = converge(conn, data_dir, model)
    assert change is not None and "on the host" in change.summary
    path = placed(data_dir, model)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".toolkit"]
    gets = files.gets()
    assert len(gets) == 1 and gets[0].headers["user-agent"].startswith("curl/")
    assert store_files(workstation_cache) == []  # the workstation fetched nothing
    again, _ = converge(conn, data_dir, model)
    assert again is None
    assert len(files.gets()) == 1


def test_a_wrong_sha256_fails_the_host_with_both_digests_and_leaves_nothing(
    host, files, workstation_cache, tmp_path
):
    conn, data_dir = host
    model = url_model(tmp_path, files.add("/tiny.gguf", DATA), OTHER_SHA)
    with pytest.raises(ToolkitError) as failed:
        converge(conn, data_dir, model)
    assert OTHER_SHA in str(failed.value) and SHA in str(failed.value)
    models = placed(data_dir, model).parent
    assert list(models.iterdir()) == []  # neither the model's name nor a .partial
    assert store_files(workstation_cache) == []


def test_an_http_error_fails_the_host_and_leaves_nothing(host, files, tmp_path):
    conn, data_dir = host
    model = url_model(tmp_path, files.url + "/missing.gguf", SHA)
    with pytest.raises(ToolkitError, match="404"):
        converge(conn, data_dir, model)
    assert list(placed(data_dir, model).parent.iterdir()) == []


def without_curl(tmp_path: Path) -> str:
    """A PATH holding every program of this machine's /usr/bin and /bin but curl and wget."""
    bin_dir = tmp_path / "nocurl-bin"
    bin_dir.mkdir()
    for directory in ("/usr/bin", "/bin"):
        for program in Path(directory).iterdir():
            target = bin_dir / program.name
            if program.name not in ("curl", "wget") and not target.exists():
                target.symlink_to(program)
    bin_dir.chmod(0o755)
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # the bed host's user must reach the directory
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    return str(bin_dir)


@pytest.mark.parametrize("downloader", ["curl", "python3"])
def test_hf_private_repo_the_token_goes_on_stdin_and_stays_with_the_hub(
    host, hub, workstation_cache, tmp_path, monkeypatch, downloader
):
    conn, data_dir = host
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.add_file("org/private", "tiny.gguf", DATA, token=TOKEN)
    model = model_from_playbook(
        tmp_path,
        f"""\
        - hosts: all
          runtimes: {{llamacpp: {{}}}}
          models:
            - name: tiny
              runtime: llamacpp
              fetch: per_host
              source: {{hf: org/private, file: tiny.gguf}}
              sha256: {SHA}
        """,
    )
    recording = RecordingConnection(
        conn, without_curl(tmp_path) if downloader == "python3" else None
    )
    converge(recording, data_dir, model)
    assert hashlib.sha256(placed(data_dir, model).read_bytes()).hexdigest() == SHA
    resolves = [r for r in hub.requests if r.method == "GET"]
    assert [r.headers.get("authorization") for r in resolves] == [f"Bearer {TOKEN}"]
    agent = resolves[0].headers["user-agent"]
    assert agent.startswith("curl/" if downloader == "curl" else "Python-urllib/")
    cdn = hub.cdn.gets()
    assert len(cdn) == 1 and "authorization" not in cdn[0].headers  # a CDN gets no token
    assert not any(TOKEN in script for script in recording.scripts)  # never on a command line
    assert store_files(workstation_cache) == []


def test_an_offline_host_is_refused_when_the_run_is_planned(host, files, tmp_path):
    conn, data_dir = host
    model = url_model(tmp_path, files.add("/tiny.gguf", DATA), SHA)
    with pytest.raises(ToolkitError) as refused:
        converge(conn, data_dir, model, host_vars={"offline": True})
    assert "offline" in str(refused.value) and "fetch: workstation" in str(refused.value)
    assert files.gets() == []
    assert not Path(data_dir).exists()


PLAY = """\
- hosts: all
  runtimes: {{llamacpp: {{}}}}
{play_extra}  models:
    - name: m
      runtime: llamacpp
      source: {source}
      sha256: {sha}
{model_extra}"""


@pytest.mark.parametrize(
    ("play_extra", "source", "model_extra", "where", "message"),
    [
        ("", "{pypi: x}", "      fetch: per_host\n", "8:14",
         'model "m" has fetch: per_host, but a pypi: source is resolved with pip'),
        ("  fetch: per_host\n", "{path: /etc/hostname}", "", "3:10",
         "a path: source is a file on the workstation; a host can fetch only url: or hf:"),
        ("", "{url: 'http://x/m.gguf'}", "      fetch: per-host\n", "8:14",
         'must be one of workstation, per_host, got "per-host" (did you mean "per_host"?)'),
        ("  fetch: host\n", "{url: 'http://x/m.gguf'}", "", "3:10",
         '"fetch" in play #1 must be one of workstation, per_host'),
    ],
)  # fmt: skip
def test_bad_fetch_settings_are_refused_with_file_and_line(
    tmp_path, play_extra, source, model_extra, where, message
):
    playbook = tmp_path / "site.yml"
    playbook.write_text(
        PLAY.format(play_extra=play_extra, source=source, sha=SHA, model_extra=model_extra)
    )
    with pytest.raises(ConfigError) as refused:
        load_playbook(playbook)
    assert str(refused.value).startswith(f"{playbook}:{where}:"), str(refused.value)
    assert message in str(refused.value)


def test_a_model_may_keep_workstation_fetching_in_a_per_host_play(tmp_path):
    playbook = tmp_path / "site.yml"
    playbook.write_text(
        PLAY.format(
            play_extra="  fetch: per_host\n",
            source="{path: /etc/hostname}",
            sha=SHA,
            model_extra="      fetch: workstation\n",
        )
    )
    assert load_playbook(playbook)[0].models[0].fetch == "workstation"


def test_a_template_decides_per_host(tmp_path):
    playbook = tmp_path / "site.yml"
    playbook.write_text(
        PLAY.format(
            play_extra="  fetch: \"{{ model_fetch | default('workstation') }}\"\n",
            source="{url: 'http://x/m.gguf'}",
            sha=SHA,
            model_extra="",
        )
    )
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    a: {ansible_connection: local}\n"
        "    b: {ansible_connection: local, model_fetch: per_host}\n"
    )
    site = load_site(playbook, inventory)
    play = site.plays[0]
    fetched = {h.name: site.play_for(play, h).models[0].fetch for h in site.inventory.select("all")}
    assert fetched == {"a": "workstation", "b": "per_host"}
