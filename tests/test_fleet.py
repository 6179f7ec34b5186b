"""A fleet over real SSH: `toolkit apply` on several loopback sshd hosts (tests/sshbed.py).

Real CLI, real sshd per host (own port, own OS user, own home as its state directory), real
virtualenv built with pip on each host, real supervisord, real proxy. The engine is
tests/llama_standin.py (a stand-in llama-server serving a canned answer): real engines on four
hosts are too heavy for a 2-core CI machine; tests/test_apply_e2e.py runs the real one.

Each host gets its own proxy and engine ports from inventory host vars, used by the playbook as
``"{{ proxy_port }}"`` and ``"{{ engine_port }}"``. Every daemon started is stopped with
`toolkit down`, then checked for by a process scan.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import REPO, free_port, refusing_port
from tests.sshbed import BedHost

STANDIN = REPO / "tests" / "llama_standin.py"
MODEL = "tiny"


def write_model(path: Path) -> str:
    """A small stand-in model file; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + secrets.token_bytes(64 * 1024))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def playbook(model: Path, sha256: str, engine: Path = STANDIN, hosts: str = "all", **args) -> list:
    return [
        {
            "name": "fleet",
            "hosts": hosts,
            "runtimes": {"llamacpp": {"install": "present", "path": str(engine)}},
            "models": [
                {
                    "name": MODEL,
                    "aliases": ["tiny-alias"],
                    "runtime": "llamacpp",
                    "source": {"path": str(model)},
                    "sha256": sha256,
                    "port": "{{ engine_port }}",
                    "args": {"ctx_size": "{{ ctx | default(2048) }}", "parallel": 2, **args},
                }
            ],
            "proxy": {"port": "{{ proxy_port }}", "workers": "{{ proxy_workers | default(1) }}"},
        }
    ]


def host_entry(host: BedHost, **extra) -> dict:
    """A bed host's inventory vars: where to log in, which known_hosts, its own ports."""
    return {
        **host.inventory_vars(),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={host.known_hosts}",
        "proxy_port": free_port(),
        "engine_port": free_port(),
        **extra,
    }


def yaml_inventory(entries: dict[str, dict], down: dict[str, dict] | None = None) -> str:
    children = {"bed": {"hosts": entries}}
    if down:
        children["down"] = {"hosts": down}
    return yaml.safe_dump({"all": {"children": children}}, sort_keys=False)


def ini_inventory(entries: dict[str, dict]) -> str:
    """The same hosts as an Ansible INI inventory."""
    lines = ["[bed]"]
    for name, values in entries.items():
        pairs = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}"
                         for k, v in values.items())  # fmt: skip
        lines.append(f"{name} {pairs}")
    return "\n".join(lines) + "\n"


class Fleet:
    """A workspace: playbook, inventories, cache and state dirs; runs the toolkit CLI."""

    def __init__(self, root: Path, hosts: list[BedHost]):
        self.root = root
        self.hosts = hosts
        self.model = root / "models" / "tiny.gguf"
        self.sha256 = write_model(self.model)
        # the first host's proxy runs as two workers (the playbook's proxy.workers, per host)
        self.entries = {
            h.name: host_entry(h, **({"proxy_workers": 2} if h is hosts[0] else {})) for h in hosts
        }
        self.down = refusing_port()  # held open for the fleet's life: a host that is down
        self.playbook = root / "fleet.yml"
        self.playbook.write_text(yaml.safe_dump(playbook(self.model, self.sha256)))
        self.inventory = root / "hosts.yml"
        self.inventory.write_text(
            yaml_inventory(
                self.entries,
                down={
                    "downhost": {
                        "ansible_host": "127.0.0.1",
                        "ansible_port": self.down.getsockname()[1],
                        "ansible_user": hosts[0].user,
                        "ansible_ssh_private_key_file": str(hosts[0].key_file),
                        "proxy_port": free_port(),
                        "engine_port": free_port(),
                    }
                },
            )
        )
        self.env = {
            **os.environ,
            "TOOLKIT_CACHE_DIR": str(root / "cache"),
            "TOOLKIT_STATE_DIR": str(root / "state"),
        }
        self.env.pop("TOOLKIT_BECOME_PASSWORD", None)

    def toolkit(self, *args: str, inventory: Path | None = None, env: dict | None = None,
                timeout: float = 900, typed: str | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        """``typed``: what the user types at a prompt (stdin; in a session of its own, with no
        terminal, so a password prompt reads it from stdin)."""
        return subprocess.run(
            [sys.executable, "-m", "toolkit.cli", *args]
            + ([] if args[0] == "history" else ["-i", str(inventory or self.inventory)]),
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
            input=typed,
            stdin=subprocess.DEVNULL if typed is None else None,
            start_new_session=typed is not None,
        )

    def apply(self, *args: str, playbook: Path | None = None, **kw) -> subprocess.CompletedProcess:
        return self.toolkit("apply", str(playbook or self.playbook), *args, **kw)

    def proxy_url(self, host: str) -> str:
        return f"http://127.0.0.1:{self.entries[host]['proxy_port']}/v1"


def events(result: subprocess.CompletedProcess, kind: str) -> list[dict]:
    found = []
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == kind:
                found.append(event)
    return found


def host_events(result: subprocess.CompletedProcess) -> dict[str, dict]:
    return {e["host"]: e for e in events(result, "host")}


def recap(output: str) -> dict[str, tuple[int, int, int, int]]:
    """host -> (ok, changed, failed, unreachable) from the PLAY RECAP table."""
    return {
        m[1]: (int(m[2]), int(m[3]), int(m[4]), int(m[5]))
        for m in re.finditer(
            r"^(\S+)\s+ok=(\d+)\s+(?:would change|changed)=(\d+)\s+failed=(\d+)\s+"
            r"unreachable=(\d+)",
            output,
            re.M,
        )
    }


def processes_of(users: set[str], marks: list[str]) -> list[tuple[int, str]]:
    """Live processes run by one of ``users``, or whose command line holds one of ``marks``."""
    uids = set()
    for user in users:
        with contextlib.suppress(KeyError):
            uids.add(pwd.getpwnam(user).pw_uid)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M)[1])
        state = re.search(r"^State:\s+(\S)", status, re.M)[1]
        if state == "Z" or "sshd" in cmdline.split(" ", 1)[0]:
            continue  # zombies wait for their parent; sshd belongs to the bed
        if uid in uids or any(mark in cmdline for mark in marks):
            found.append((int(entry.name), cmdline))
    return found


def standin_pids(user: str) -> dict[str, int]:
    """The pids of a host's engine stand-in and proxy, by process scan."""
    pids = {}
    for pid, cmdline in processes_of({user}, []):
        if "llama_standin" in cmdline or "llama-server" in cmdline:
            pids["engine"] = pid
        elif "-m proxy" in cmdline:
            pids["proxy"] = pid
    return pids


def stop_and_scan(fleet: Fleet, inventory: Path, playbook: Path, users: set[str],
                  marks: list[str]) -> list:  # fmt: skip
    """`toolkit down`, then kill (by pid) whatever is left and return it: should be nothing."""
    fleet.toolkit("down", str(playbook), "--limit", "bed", inventory=inventory)
    left = [
        (pid, cmd)
        for pid, cmd in processes_of(users, marks)
        if "supervisord" in cmd or "proxy" in cmd or "llama" in cmd or "python" in cmd
    ]
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


# -- the fleet: four SSH hosts and one that is down ------------------------------------------


@pytest.fixture(scope="module")
def fleet(ssh_hosts, tmp_path_factory):
    for host in ssh_hosts:
        host.clean_home()
    ws = Fleet(tmp_path_factory.mktemp("fleet"), ssh_hosts)
    ws.first = ws.apply()
    try:
        yield ws
    finally:
        ws.down.close()
        left = stop_and_scan(ws, ws.inventory, ws.playbook, {h.user for h in ssh_hosts}, [])
        for host in ssh_hosts:
            host.clean_home()
        assert left == [], f"daemons left behind: {left}"


def test_parallel_apply_converges_four_hosts_while_one_is_down(fleet):
    out = fleet.first.stdout + fleet.first.stderr
    assert fleet.first.returncode == 1, out  # one host failed: the exit code says so
    table = recap(out)
    assert set(table) == {h.name for h in fleet.hosts} | {"downhost"}, out
    for host in fleet.hosts:
        ok, changed, failed, unreachable = table[host.name]
        assert changed > 0 and failed == 0 and unreachable == 0, out
        assert re.search(rf"^{host.name}:\s+verified\s+{MODEL}: answered", out, re.M), out
    assert table["downhost"][2:] == (1, 1)
    assert re.search(r"^downhost: UNREACHABLE: .*connection refused", out, re.M), out
    assert "PLAY RECAP" in out
    # Live lines per host and step, Ansible-like.
    assert re.search(r"^tkhost\d: +change +runtime:venv: create virtualenv", out, re.M), out
    assert re.search(r"^tkhost\d: +applying +services", out, re.M), out


def test_each_host_serves_its_own_endpoint(fleet):
    for host in fleet.hosts:
        client = openai.OpenAI(base_url=fleet.proxy_url(host.name), api_key="unused")
        assert MODEL in [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(
            model="tiny-alias", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        assert reply.choices[0].message.content.strip()
        chunks = list(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
        # State lives in the host's own home, owned by its own user.
        data = host.home / ".local/share/toolkit"
        placed = data / f"models/sha256-{fleet.sha256}.gguf"
        assert placed.read_bytes() == fleet.model.read_bytes()
        assert placed.stat().st_uid == (host.home.stat().st_uid)


def test_each_proxy_runs_the_workers_its_play_asks_for(fleet):
    for host in fleet.hosts:
        workers = fleet.entries[host.name].get("proxy_workers", 1)
        proxies = [cmd for _, cmd in processes_of({host.user}, []) if " -m proxy " in cmd]
        assert all(cmd.endswith(f" --workers {workers} ") for cmd in proxies), proxies
        # one process serves alone; several workers have a parent that only supervises them
        assert len(proxies) == (1 if workers == 1 else workers + 1), proxies


def test_second_apply_changes_nothing_in_one_round_trip_per_host(fleet):
    before = {h.name: standin_pids(h.user) for h in fleet.hosts}
    again = fleet.apply("--limit", "bed", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    hosts = host_events(again)
    assert set(hosts) == {h.name for h in fleet.hosts}
    for event in hosts.values():
        assert event["changed"] == 0 and not event["failed"], event
        assert event["round_trips"] == 1, event
        assert event["verify"][MODEL]["tokens"] > 0
    assert events(again, "change") == []
    assert {h.name: standin_pids(h.user) for h in fleet.hosts} == before  # nothing restarted


def test_the_same_inventory_in_ini_form_works_unchanged(fleet):
    ini = fleet.root / "hosts.ini"
    ini.write_text(ini_inventory(fleet.entries))
    again = fleet.apply("--json", inventory=ini)
    assert again.returncode == 0, again.stdout + again.stderr
    hosts = host_events(again)
    assert set(hosts) == {h.name for h in fleet.hosts}
    assert all(e["changed"] == 0 and e["round_trips"] == 1 for e in hosts.values()), hosts
    facts = fleet.toolkit("facts", "bed", "--json", inventory=ini)
    assert facts.returncode == 0, facts.stderr
    gathered = json.loads(facts.stdout)
    assert {name: f["user"] for name, f in gathered.items()} == {
        h.name: h.user for h in fleet.hosts
    }
    assert all(
        f["home"] == str(h.home) for h, f in zip(fleet.hosts, gathered.values(), strict=True)
    )


def test_facts_prints_every_host_and_reports_the_one_down(fleet):
    result = fleet.toolkit("facts")
    assert result.returncode == 1, result.stderr  # a host did not answer (issue 15)
    assert result.stderr == "error: no facts from downhost\n"
    for host in fleet.hosts:
        assert re.search(rf"^{host.name}\n(  .*\n)*  user +{host.user}$", result.stdout, re.M)
    assert re.search(r"^downhost\n  error +.*connection refused", result.stdout, re.M)


def test_limit_narrows_the_run(fleet):
    one = fleet.apply("--limit", "tkhost3", "--json")
    assert one.returncode == 0, one.stdout + one.stderr
    assert set(host_events(one)) == {"tkhost3"}
    some = fleet.apply("--limit", "bed:!tkhost1:!tkhost3", "--json")
    assert some.returncode == 0, some.stdout + some.stderr
    assert set(host_events(some)) == {"tkhost2", "tkhost4"}
    history = fleet.toolkit("history")
    assert history.returncode == 0
    assert re.search(r"apply .*hosts=1 .*changed=0", history.stdout), history.stdout


def test_each_play_of_a_playbook_runs_on_its_own_hosts(fleet, tmp_path):
    """Two plays: the first on one host, the second on a group less that host, with a play var
    that differs; each host is worked on by its play only, and a converged host stays as it is."""
    first, second = (
        playbook(fleet.model, fleet.sha256, hosts="tkhost1")[0],
        playbook(fleet.model, fleet.sha256, hosts="bed:!tkhost1:!tkhost4")[0],
    )
    first["name"], second["name"] = "one", "two"
    second["vars"] = {"ctx": 4096}  # play vars reach the play's templated values
    plays = tmp_path / "two-plays.yml"
    plays.write_text(yaml.safe_dump([first, second]))
    check = fleet.apply("--check", "--json", playbook=plays)
    assert check.returncode == 2, check.stdout + check.stderr  # the second play changes ctx
    assert [(e["play"], e["hosts"]) for e in events(check, "play")] == [
        ("one", ["tkhost1"]),
        ("two", ["tkhost2", "tkhost3"]),
    ]
    changed = {e["host"] for e in events(check, "change")}
    assert changed == {"tkhost2", "tkhost3"}, check.stdout


def test_check_and_diff_show_the_change_and_change_nothing(fleet):
    host = fleet.hosts[1]
    routes = host.home / ".local/share/toolkit/proxy/routes.yml"
    original = routes.read_bytes()
    routes.write_text("models: {}\n")
    try:
        check = fleet.apply("--check", "--diff", "--limit", host.name)
        out = check.stdout + check.stderr
        assert check.returncode == 2, out  # changes pending
        assert re.search(rf"^{host.name}: would change +file:proxy/routes.yml: update", out, re.M)
        assert re.search(r"^\+  \"tiny\":$", out, re.M), out  # the unified diff of the file
        assert re.search(r"^-models: \{\}$", out, re.M), out
        assert routes.read_text() == "models: {}\n"
        assert recap(out)[host.name][1] == 1
        # Applying puts the file back; the proxy re-reads it: no service restarts.
        before = standin_pids(host.user)
        fixed = fleet.apply("--limit", host.name, "--json")
        assert fixed.returncode == 0, fixed.stdout
        assert [e["resource"] for e in events(fixed, "change")] == ["file:proxy/routes.yml"]
        assert routes.read_bytes() == original
        assert standin_pids(host.user) == before
    finally:
        routes.write_bytes(original)


def engine_ctx(pid: int) -> bytes:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"-c") + 1]


def test_a_changed_engine_moves_to_its_other_slot_and_nothing_else_restarts(fleet):
    # A changed engine is not restarted in place: the new one starts in the model's other slot
    # beside the old (toolkit/switch.py), the routes file moves to it, the old one is retired.
    host = fleet.hosts[3]
    before = standin_pids(host.user)
    bigger = fleet.apply("--limit", host.name, "-e", "ctx=4096", "--json")
    assert bigger.returncode == 0, bigger.stdout + bigger.stderr
    changes = {e["resource"]: e["summary"] for e in events(bigger, "change")}
    assert set(changes) == {"file:proxy/routes.yml", "file:services.json",
                            "file:supervisor/programs/engine-tiny-alt.conf", "services",
                            "switch:ready", "switch:retire"}, changes  # fmt: skip
    after = standin_pids(host.user)
    assert after["engine"] != before["engine"] and after["proxy"] == before["proxy"]
    assert engine_ctx(after["engine"]) == b"4096"
    back = fleet.apply("--limit", host.name, "--json")
    assert back.returncode == 0, back.stdout + back.stderr
    assert {"switch:ready", "switch:retire"} <= {e["resource"] for e in events(back, "change")}
    returned = standin_pids(host.user)
    assert engine_ctx(returned["engine"]) == b"2048" and returned["proxy"] == before["proxy"]
    again = fleet.apply("--limit", host.name, "--json")
    assert events(again, "change") == [] and host_events(again)[host.name]["round_trips"] == 1


# -- host keys --------------------------------------------------------------------------------


def test_an_unknown_host_key_is_refused_unless_accepted_explicitly(fleet, tmp_path):
    host = fleet.hosts[0]
    known = tmp_path / "known_hosts"
    known.write_text("")
    entry = {
        **fleet.entries[host.name],
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known}",
    }
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml_inventory({host.name: entry}))
    logins = host.logins()

    refused = fleet.apply("--check", inventory=inventory)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1, out
    assert re.search(rf"^{host.name}: UNREACHABLE: .*host key .* is unknown", out, re.M), out
    assert host.logins() == logins  # refused before logging in
    assert known.read_text() == ""

    accepted = fleet.toolkit("facts", "--json", "--accept-new-host-keys", inventory=inventory)
    assert json.loads(accepted.stdout)[host.name]["user"] == host.user, accepted.stdout
    assert host.host_key in known.read_text()
    strict = fleet.apply("--check", inventory=inventory)  # now known: strict accepts it
    assert strict.returncode == 0, strict.stdout + strict.stderr

    other = fleet.hosts[1]  # a known host presenting another key: refused, even with accept-new
    known.write_text(f"[127.0.0.1]:{host.port} {other.host_key}\n")
    changed = fleet.apply("--check", "--accept-new-host-keys", inventory=inventory)
    assert changed.returncode == 1
    assert "host key has CHANGED" in changed.stdout, changed.stdout


def test_a_jump_host_carries_the_run(fleet, tmp_path):
    jump, target = fleet.hosts[0], fleet.hosts[1]
    entry = {
        **fleet.entries[target.name],
        "ansible_ssh_common_args": f"-o ProxyJump={jump.user}@127.0.0.1:{jump.port} "
        f"-o UserKnownHostsFile={target.known_hosts}",
    }
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml_inventory({target.name: entry}))
    jump_logins, target_logins = jump.logins(), target.logins()
    again = fleet.apply("--json", inventory=inventory)
    assert again.returncode == 0, again.stdout + again.stderr
    event = host_events(again)[target.name]
    assert event["changed"] == 0 and event["round_trips"] == 1, event
    assert (jump.logins() - jump_logins, target.logins() - target_logins) == (1, 1)


# -- become -----------------------------------------------------------------------------------


@pytest.fixture
def become_root():
    root = Path("/var/tmp") / f"toolkit-fleet-become-{secrets.token_hex(4)}"
    root.mkdir(mode=0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_become_converges_as_root_and_never_logs_the_password(fleet, become_root):
    hosts = [h for h in fleet.hosts if h.sudo in ("nopasswd", "password")][:2]
    password = next(h.sudo_password for h in hosts if h.sudo == "password")
    entries = {
        h.name: host_entry(h, ansible_become=True, toolkit_data_dir=str(become_root / h.name))
        for h in hosts
    }
    inventory = fleet.root / "become.yml"
    inventory.write_text(yaml_inventory(entries))
    env = {"TOOLKIT_BECOME_PASSWORD": password}
    try:
        first = fleet.apply(inventory=inventory, env=env)
        out = first.stdout + first.stderr
        assert first.returncode == 0, out
        for h in hosts:
            data = become_root / h.name
            assert (data / "proxy/routes.yml").stat().st_uid == 0
            assert (data / f"models/sha256-{fleet.sha256}.gguf").stat().st_uid == 0
            assert re.search(rf"^{h.name}:\s+verified\s+{MODEL}", out, re.M), out
            url = f"http://127.0.0.1:{entries[h.name]['proxy_port']}/v1/models"
            assert MODEL in [m["id"] for m in httpx.get(url, timeout=10).json()["data"]]
        # the second run is told the password at -K's prompt instead of by the environment
        again = fleet.apply("--json", "-K", inventory=inventory, typed=password + "\n")
        assert again.returncode == 0, again.stderr
        assert "BECOME password" in again.stderr
        facts = {e["host"]: e["facts"] for e in events(again, "facts")}
        assert {f["user"] for f in facts.values()} == {"root"}
        assert all(e["changed"] == 0 for e in host_events(again).values()), again.stdout
        history = (fleet.root / "state/history.jsonl").read_text()
        for text in (out, again.stdout, again.stderr, history):
            assert password not in text
        for log in (become_root).rglob("*.log"):
            assert password not in log.read_text(errors="replace")
        wrong = fleet.apply("--check", inventory=inventory, env={"TOOLKIT_BECOME_PASSWORD": "no"})
        assert wrong.returncode == 1
        assert {h: r[2] for h, r in recap(wrong.stdout).items()} == {
            h.name: int(h.sudo == "password") for h in hosts
        }, wrong.stdout
    finally:
        fleet.toolkit("down", str(fleet.playbook), inventory=inventory, env=env)
    left = [(p, c) for p, c in processes_of(set(), [str(become_root)])]
    assert left == []


# -- quoting ----------------------------------------------------------------------------------

ODD = "odd$(touch {canary}1)`touch {canary}2`;touch {canary}3;x='q' \"dq\" & y|z"
# A data dir may not hold $ ` " \\ (pip writes the venv's path into a double-quoted shell line
# in the scripts it installs) nor both quote kinds (supervisord's environment= line): toolkit
# refuses those with a clear error, tested below. No whitespace either: supervisord's
# `[include] files =` splits on it (see the report: a relative include would lift that).
ODD_DIR = "dir;x='q'&y|z(a)<b>"


def test_shell_metacharacters_in_vars_names_and_paths_run_nothing(fleet, tmp_path):
    canary = f"/tmp/pwned-{secrets.token_hex(4)}-"
    odd = ODD.format(canary=canary)
    host = fleet.hosts[3]
    # A stand-in engine and a model under paths full of metacharacters, a data dir too.
    base = Path("/var/tmp") / f"toolkit-fleet-{secrets.token_hex(4)}"
    bin_dir = base / odd  # "/" in the canary path makes this several nested directories
    bin_dir.mkdir(parents=True)
    engine = bin_dir / "llama-server"
    shutil.copy(STANDIN, engine)
    engine.chmod(0o755)
    model = tmp_path / odd / "tiny $(touch x).gguf"
    sha256 = write_model(model)
    data_dir = f"{host.home}/{ODD_DIR}"
    pb = tmp_path / "odd.yml"
    plays = playbook(model, sha256, engine=engine, chat_template="{{ template }}",
                     extra=["--x={{ template }}"])  # fmt: skip
    pb.write_text(yaml.safe_dump(plays))
    entries = {host.name: host_entry(host, toolkit_data_dir=data_dir, template=odd)}
    inventory = tmp_path / "odd-hosts.yml"
    inventory.write_text(yaml_inventory(entries))
    try:
        done = fleet.apply(playbook=pb, inventory=inventory)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        engine_pid = standin_pids(host.user)
        argv = [
            Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            for pid, cmd in processes_of({host.user}, [])
            if str(engine) in cmd
        ]
        assert argv and engine_pid, out
        assert argv[0][argv[0].index(b"--chat-template") + 1] == odd.encode()
        assert f"--x={odd}".encode() in argv[0]
        assert Path(data_dir, f"models/sha256-{sha256}.gguf").read_bytes() == model.read_bytes()
        again = fleet.apply("--json", playbook=pb, inventory=inventory)
        assert all(e["changed"] == 0 for e in host_events(again).values()), again.stdout

        # A model name with metacharacters is refused before anything runs.
        plays[0]["models"][0]["name"] = "{{ template }}"
        pb.write_text(yaml.safe_dump(plays))
        bad = fleet.apply(playbook=pb, inventory=inventory)
        assert bad.returncode == 1 and "model name" in bad.stderr, bad.stderr
        plays[0]["models"][0]["name"] = MODEL
        pb.write_text(yaml.safe_dump(plays))
        # A data dir that pip's launcher scripts would let the shell expand is refused.
        refused = {host.name: {**entries[host.name], "toolkit_data_dir": f"{host.home}/{odd}"}}
        inventory.write_text(yaml_inventory(refused))
        bad_dir = fleet.apply(playbook=pb, inventory=inventory)
        assert bad_dir.returncode == 1 and "toolkit_data_dir" in bad_dir.stdout, bad_dir.stdout
        assert not Path(host.home, "odd$(touch /").exists()  # refused before anything ran
        inventory.write_text(yaml_inventory(entries))
        # A newline in a value is refused before any service definition is written.
        newline = "x\n[program:evil]\ncommand=/usr/bin/touch " + canary + "4"
        evil = fleet.apply(
            "-e", json.dumps({"template": newline}), playbook=pb, inventory=inventory
        )
        assert evil.returncode == 1, evil.stdout
        assert "control character" in evil.stdout, evil.stdout
    finally:
        plays[0]["models"][0]["name"] = MODEL
        pb.write_text(yaml.safe_dump(plays))
        inventory.write_text(yaml_inventory(entries))
        left = stop_and_scan(fleet, inventory, pb, set(), [data_dir])
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    assert left == []
    assert sorted(Path("/tmp").glob(Path(canary).name + "*")) == []
    assert not Path(host.home, "x").exists()  # "$(touch x)" in the model's name ran nowhere


# -- variables in playbook values (no SSH) ------------------------------------------------------


def write_site(tmp_path: Path, play_vars: dict | None = None, proxy_port="{{ proxy_port }}"):
    model = tmp_path / "m.gguf"
    sha256 = write_model(model)
    plays = playbook(model, sha256)
    plays[0]["proxy"]["port"] = proxy_port
    if play_vars is not None:
        plays[0]["vars"] = play_vars
    (tmp_path / "site.yml").write_text(yaml.safe_dump(plays))
    (tmp_path / "hosts.ini").write_text(
        "[bed]\nh1 proxy_port=9100 engine_port=9101\nh2 proxy_port=9200 engine_port=9201\n"
        "[bed:vars]\nctx=1024\n"
    )
    return tmp_path / "site.yml", tmp_path / "hosts.ini"


def rendered(site) -> dict[str, tuple]:
    return {
        host.name: (p.proxy.port, p.models[0].port, p.models[0].args["ctx_size"])
        for play, hosts in site.targets()
        for host in hosts
        for p in [site.play_for(play, host)]
    }


def test_vars_reach_playbook_values_with_ansible_precedence(tmp_path):
    from toolkit.site import load_site

    pb, inv = write_site(tmp_path)
    assert rendered(load_site(pb, inv)) == {"h1": (9100, 9101, 1024), "h2": (9200, 9201, 1024)}
    pb, inv = write_site(tmp_path, play_vars={"ctx": 4096, "proxy_port": 9300})  # play > inventory
    assert rendered(load_site(pb, inv)) == {"h1": (9300, 9101, 4096), "h2": (9300, 9201, 4096)}
    extra = {"ctx": "8192", "engine_port": "9400"}  # -e > play vars; "8192" becomes an int
    assert rendered(load_site(pb, inv, extra)) == {
        "h1": (9300, 9400, 8192),
        "h2": (9300, 9400, 8192),
    }


def test_a_templated_value_that_is_not_an_integer_is_a_clear_error(tmp_path):
    from toolkit.errors import ConfigError
    from toolkit.site import load_site

    pb, inv = write_site(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_site(pb, inv, {"proxy_port": "80a"})
    message = str(caught.value)
    assert re.match(rf"{re.escape(str(pb))}:\d+:\d+: ", message), message
    assert '"port" in proxy must be an integer' in message
    assert "\"{{ proxy_port }}\" rendered as '80a' for host h1" in message
    pb, inv = write_site(tmp_path, proxy_port="{{ nope }}")
    with pytest.raises(ConfigError, match=r"cannot render \"\{\{ nope \}\}\" for host h1: "
                       "'nope' is undefined"):  # fmt: skip
        load_site(pb, inv)
    with pytest.raises(ConfigError, match="between 1 and 65535"):
        load_site(pb, inv, {"nope": "70000"})
