"""Keys and TLS toolkit delivers: `proxy: {keys: generate}` makes one key per host, keeps it 0600
on the workstation and the host, shows it once in the recap, and nowhere else: not in any file
toolkit wrote on either side, not in any log line, not in --json. HF_TOKEN likewise never leaks.
`tls: self-signed` makes the proxy speak HTTPS with a certificate clients verify against the CA
file the recap names.

The engine here is tests/llama_standin.py (a stand-in llama-server answering a canned text): the
test is about what toolkit writes and prints, not about inference.
"""

from __future__ import annotations

import hashlib
import os
import signal
import ssl
import stat
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import REPO, free_port, processes_mentioning

STANDIN = REPO / "tests" / "llama_standin.py"
HF_TOKEN = "hf_testtoken_" + "x" * 24


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    model = root / "tiny.gguf"
    model.write_bytes(b"GGUF" + os.urandom(4096))  # the stand-in does not read it
    port = free_port()
    play = {
        "hosts": "all",
        "runtimes": {"llamacpp": {"install": "present", "path": str(STANDIN)}},
        "models": [{"name": "tiny", "runtime": "llamacpp", "source": {"path": str(model)},
                    "sha256": hashlib.sha256(model.read_bytes()).hexdigest()}],
        "proxy": {"port": port, "keys": "generate", "tls": "self-signed"},
    }  # fmt: skip
    (root / "site.yml").write_text(yaml.safe_dump([play]))
    data = root / "data"
    (root / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "toolkit_data_dir": str(data)}}}}))  # fmt: skip
    env = {**os.environ, "TOOLKIT_CACHE_DIR": str(root / "cache"),
           "TOOLKIT_STATE_DIR": str(root / "state"), "HF_TOKEN": HF_TOKEN}  # fmt: skip

    def toolkit(*args):
        return subprocess.run(
            [sys.executable, "-m", "toolkit.cli", *args, "-i", str(root / "hosts.yml")],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip

    bench = type("Keyed", (), {})()
    bench.root, bench.data, bench.port, bench.toolkit = root, data, port, toolkit
    bench.first = toolkit("apply", str(root / "site.yml"))
    bench.second = toolkit("apply", str(root / "site.yml"), "--json", "--diff")
    try:
        yield bench
    finally:
        toolkit("down", str(root / "site.yml"))
        for pid, _ in processes_mentioning(data):
            os.kill(pid, signal.SIGKILL)


def the_key(bench) -> str:
    return (bench.root / "state/keys/localhost").read_text().strip()


def test_the_key_is_made_once_kept_0600_and_shown_once(keyed):
    out = keyed.first.stdout
    assert keyed.first.returncode == 0, out + keyed.first.stderr
    key = the_key(keyed)
    assert key.startswith("tk-") and len(key) > 40
    assert "API key made for localhost (shown once" in out and key in out
    for path in (keyed.root / "state/keys/localhost", keyed.data / "proxy/api-keys"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert keyed.second.returncode == 0, keyed.second.stdout + keyed.second.stderr
    assert key not in keyed.second.stdout + keyed.second.stderr  # not again, not in --json
    assert '"changed": 0' in keyed.second.stdout


def test_the_proxy_speaks_https_and_wants_the_key(keyed):
    ca = keyed.root / "state/tls/localhost/cert.pem"
    assert f"clients trust {ca}" in keyed.first.stdout
    assert "proxy TLS certificate SHA-256 " in keyed.first.stdout
    trust = ssl.create_default_context(cafile=str(ca))
    url = f"https://127.0.0.1:{keyed.port}/v1/chat/completions"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with pytest.raises(httpx.ConnectError):  # a client that does not trust it is refused
        httpx.post(url, json=body, timeout=30)
    assert httpx.post(url, json=body, timeout=30, verify=trust).status_code == 401
    headers = {"Authorization": f"Bearer {the_key(keyed)}"}
    answer = httpx.post(url, json=body, headers=headers, timeout=30, verify=trust)
    assert answer.status_code == 200, answer.text
    assert stat.S_IMODE((keyed.data / "proxy/tls/key.pem").stat().st_mode) == 0o600


def test_no_key_and_no_hf_token_in_any_file_or_log(keyed):
    key = the_key(keyed).encode()
    allowed = {keyed.root / "state/keys/localhost", keyed.data / "proxy/api-keys"}
    private = (keyed.root / "state/tls/localhost/key.pem").read_bytes()
    leaks = []
    for folder in (keyed.data, keyed.root / "state", keyed.root / "cache"):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and path not in allowed:
                content = path.read_bytes()
                if key in content or HF_TOKEN.encode() in content:
                    leaks.append(str(path))
                if private in content and path.name != "key.pem":
                    leaks.append(f"{path} (the TLS private key)")
    assert not leaks, leaks
    output = keyed.first.stdout + keyed.first.stderr
    assert HF_TOKEN not in output + keyed.second.stdout + keyed.second.stderr
    assert output.count(key.decode()) == 1  # the recap's one line, nothing else
