"""Ollama ``present`` without a binary on PATH: a running Ollama is adopted, never stopped.

The test starts the Ollama STAND-IN (tests/ollama_standin.py, real tokens from llama.cpp) itself,
as a daemon toolkit did not start, from a folder that is not on PATH, and tells toolkit where it
listens the way a user's shell does (``OLLAMA_HOST``). toolkit must find it through
``/api/version``, pull and import into it, point the routes file at it, verify through the proxy,
change nothing on a second apply, and leave it running after ``toolkit down``.

The pull's progress must be shown while the pull runs: the stand-in holds the pull halfway
until a gate file exists, and the test opens the gate only once ``toolkit apply --json`` has
printed a progress event of that pull between 0 and its total. Progress read only at the end
would never open it, and the pull would fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import GEMMA_SHA256, free_port, processes_mentioning, wait_http_ok
from tests.runtime_releases import TESTS, standin_executable
from tests.runtime_site import RuntimeSite, recap

VERSION = "0.31.1"


class StandinDaemon:
    """The Ollama stand-in as a user's own ``ollama serve``: started and stopped by pid."""

    def __init__(self, root: Path, library: dict[str, str], gate: Path | None = None):
        self.root = root
        self.port = free_port()
        binary = root / "bin" / "ollama"
        binary.parent.mkdir(parents=True)
        binary.write_bytes(standin_executable("ollama_standin.py", VERSION=VERSION,
                                              LIBRARY=library))  # fmt: skip
        binary.chmod(0o755)
        engine = root / "lib" / "ollama" / "standin_engine.py"
        engine.parent.mkdir(parents=True)
        engine.write_bytes((TESTS / "standin_engine.py").read_bytes())
        env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{self.port}",
               "OLLAMA_MODELS": str(root / "models"), "HOME": str(root)}  # fmt: skip
        if gate is not None:
            env["OLLAMA_STANDIN_PULL_GATE"] = str(gate)
        self.log = (root / "serve.log").open("wb")
        self.proc = subprocess.Popen([str(binary), "serve"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http_ok(f"{self.url}/api/version", 60, self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()
        for pid, _ in processes_mentioning(self.root):  # its engine dies with it; make sure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def play(proxy_port: int, runtime: dict, models: list[dict]) -> list[dict]:
    return [{"name": "adopt", "hosts": "all", "runtimes": {"ollama": runtime},
             "models": models, "proxy": {"port": proxy_port}}]  # fmt: skip


PULLED = {"name": "gemma-pulled", "runtime": "ollama", "source": {"ollama": "gemma3:270m"}}


def apply_opening_the_gate(ws: RuntimeSite, gate: Path, label: str) -> tuple[int, list[dict]]:
    """``toolkit apply --json``, read as it runs; the gate is opened at the first progress event
    of ``label`` strictly between 0 and its total. Returns the exit status and the events."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", "apply", str(ws.playbook), "--json",
         "-i", str(ws.inventory)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ws.env,
    )  # fmt: skip
    timer = threading.Timer(900, proc.kill)  # bounded: a hung apply fails the test
    timer.start()
    events = []
    try:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                events.append({"event": "text", "text": line})
                continue
            events.append(event)
            midway = event.get("event") == "progress" and label in event.get("label", "")
            if midway and 0 < event["done"] < (event["total"] or 0) and not gate.exists():
                gate.touch()
        return proc.wait(), events
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def daemon(tmp_path, gemma_gguf):
    running = StandinDaemon(tmp_path / "users-ollama", {"gemma3:270m": str(gemma_gguf)},
                            gate=tmp_path / "gate")  # fmt: skip
    try:
        yield running
    finally:
        running.stop()


def test_a_running_ollama_not_on_path_is_adopted_used_and_left_running(
    tmp_path, daemon, gemma_gguf
):
    proxy_port = free_port()
    imported = {"name": "gemma-import", "runtime": "ollama", "sha256": GEMMA_SHA256,
                "source": {"path": str(gemma_gguf)}, "args": {"system": "Answer briefly."}}  # fmt: skip
    ws = RuntimeSite(tmp_path / "site", play(proxy_port, {"install": "auto"}, [imported, PULLED]))
    ws.env["OLLAMA_HOST"] = f"127.0.0.1:{daemon.port}"  # as the user's shell tells it
    gate = tmp_path / "gate"
    try:
        rc, events = apply_opening_the_gate(ws, gate, "pull gemma3:270m")
        text = "\n".join(json.dumps(e) for e in events)
        assert rc == 0, text
        # the pull's progress came while the pull was held: the gate was opened from it
        assert gate.exists(), text
        pulls = [e for e in events if e.get("event") == "progress" and "pull" in e["label"]]
        assert any(0 < e["done"] < e["total"] for e in pulls), pulls
        assert any(e["done"] == e["total"] for e in pulls), pulls

        # models went into the user's Ollama; toolkit defines no Ollama service of its own
        tags = httpx.get(f"{daemon.url}/api/tags", timeout=10).json()
        assert {m["name"] for m in tags["models"]} == {"gemma3:270m", "gemma-import:latest"}
        assert (daemon.root / f"models/blobs/sha256-{GEMMA_SHA256}").is_file()
        definitions = [p.name for p in ws.data.rglob("*.conf")]
        assert not [n for n in definitions if "ollama" in n], definitions
        routes = (ws.data / "proxy/routes.yml").read_text()
        assert routes.count(f"url: {daemon.url}") + routes.count(f'url: "{daemon.url}"') == 2
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy_port}/v1", api_key="unused")
        for name in ("gemma-import", "gemma-pulled"):
            reply = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Name a colour."}],
                max_tokens=8, temperature=0,
            )  # fmt: skip
            assert reply.choices[0].message.content.strip()

        again = ws.apply()
        out = again.stdout + again.stderr
        assert again.returncode == 0, out
        assert recap(again.stdout)[1] == 0, out
        assert f"adopted the running Ollama {VERSION} at {daemon.url}" in out, out

        down = ws.down()
        assert down.returncode == 0, down.stdout + down.stderr
        assert daemon.proc.poll() is None  # not toolkit's to stop
        assert httpx.get(f"{daemon.url}/api/version", timeout=10).json() == {"version": VERSION}
        assert not ws.processes()  # its own proxy did stop

        # `install: present` and the adopted daemon gone: apply is refused, down still works
        ws.write_playbook(play(proxy_port, {"install": "present"}, [imported, PULLED]))
        assert ws.apply().returncode == 0  # the proxy up again
        daemon.stop()
        refused = ws.apply()
        assert refused.returncode != 0 and "no Ollama answer" in refused.stdout, refused.stdout
        gone = ws.down()
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert not ws.processes()
    finally:
        ws.down()
        ws.kill_leftovers()


@pytest.mark.parametrize(
    "ollama_host, url",
    [
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("127.0.0.1:9999", "http://127.0.0.1:9999"),
        ("http://10.0.0.5", "http://10.0.0.5:80"),
        ("https://ollama.lan/", "https://ollama.lan:443"),
        ("[::]:8080", "http://[::1]:8080"),
        (":1234", "http://127.0.0.1:1234"),
        ("box:1/prefix/", "http://box:1/prefix"),
    ],
)
def test_ollama_host_is_read_as_ollamas_own_client_reads_it(ollama_host, url):
    from toolkit.runtimes.ollama import OLLAMA_URL_SH

    script = f'{OLLAMA_URL_SH}\ntk_ollama_url "$1"'
    out = subprocess.run(["/bin/sh", "-c", script, "sh", ollama_host], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert out.stdout == url, out.stderr


def test_present_without_binary_or_daemon_says_where_it_looked():
    from toolkit.errors import ToolkitError
    from toolkit.hosts.facts import Facts
    from toolkit.runtimes.ollama import Ollama
    from toolkit.site import RuntimeSpec

    facts = Facts(os="Linux", arch="x86_64", probed={"ollama_daemon": "http://127.0.0.1:11434 -"})
    missing = Ollama().resolve(RuntimeSpec("ollama", "present", {}), facts, "/d")
    # refused when the host is planned, so that `down` can still design the host
    [refusal] = missing.resources
    with pytest.raises(ToolkitError) as caught:
        refusal.plan("", None, set())
    message = str(caught.value)
    assert "no Ollama answering http://127.0.0.1:11434/api/version" in message, message
    assert "runtimes.ollama.url" in message and "install: release" in message, message
    # auto with nothing found installs a release; with a daemon answering, it adopts it
    assert Ollama().resolve(RuntimeSpec("ollama", "auto", {}), facts, "/d").strategy == "release"
    facts.probed["ollama_daemon"] = "http://127.0.0.1:11434 0.31.1"
    install = Ollama().resolve(RuntimeSpec("ollama", "auto", {}), facts, "/d")
    assert install.details["adopted"] and install.resources == []


@pytest.mark.parametrize(
    "runtime, fragment",
    [
        ({"install": "present", "url": "http://host:port"}, "is not an address Ollama listens on"),
        ({"install": "release", "url": "127.0.0.1:11434"}, "with install: release toolkit runs"),
        ({"url": "127.0.0.1:11434", "path": "/opt/ollama"}, "keep one of them"),
    ],
)
def test_url_is_checked_with_file_and_line(tmp_path, runtime, fragment):
    import yaml

    from toolkit.errors import ConfigError
    from toolkit.site import load_site

    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(play(8080, runtime, [PULLED]), sort_keys=False))
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n")
    with pytest.raises(ConfigError) as caught:
        load_site(path, tmp_path / "hosts.yml")
    message = str(caught.value)
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", message), message
    assert fragment in message, message


def test_pull_progress_streams_over_ssh_too(tmp_path, daemon, ssh_hosts):
    """The same held pull on a host reached over real SSH (tests/sshbed.py): its helper's lines
    cross the SSH channel as they come. The host adopts the daemon named by ``url:``."""
    host = ssh_hosts[-1]
    host.clean_home()
    plays = [{"name": "adopt-over-ssh", "hosts": "all",
              "runtimes": {"ollama": {"install": "present", "url": daemon.url}},
              "models": [PULLED]}]  # fmt: skip
    ws = RuntimeSite(tmp_path / "site", plays)
    entry = {**host.inventory_vars(),
             "ansible_ssh_common_args": f"-o UserKnownHostsFile={host.known_hosts}"}  # fmt: skip
    ws.inventory.write_text(yaml.safe_dump({"all": {"hosts": {host.name: entry}}}))
    try:
        rc, events = apply_opening_the_gate(ws, tmp_path / "gate", "pull gemma3:270m")
        assert rc == 0, "\n".join(json.dumps(e) for e in events)
        assert (tmp_path / "gate").exists()
        tags = httpx.get(f"{daemon.url}/api/tags", timeout=10).json()
        assert [m["name"] for m in tags["models"]] == ["gemma3:270m"]
    finally:
        down = ws.down()
        assert down.returncode == 0, down.stdout + down.stderr
        assert daemon.proc.poll() is None
        left = processes_mentioning(host.home)
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        host.clean_home()
        assert not left, left
