"""SSHConnection against real sshd daemons on loopback (tests/sshbed.py); no mocks."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import refusing_port
from tests.sshbed import BedHost, SSHBed
from toolkit.hosts import sshconfig
from toolkit.hosts.connect import connect
from toolkit.hosts.connection import HostUnreachable, LocalConnection, quote
from toolkit.hosts.ssh import HostKeyRejected, SSHConnection, parse_host_spec
from toolkit.inventory import Host, load_inventory


def open_ssh(host: BedHost, **options) -> SSHConnection:
    return host.connect(ssh_config=None, **options)  # as before: the default ssh_config lookup


def host_with_sudo(hosts: list[BedHost], kind: str) -> BedHost:
    return next(h for h in hosts if h.sudo == kind)


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


# -- running commands and moving files ---------------------------------------------------------


def test_run_put_get_on_four_hosts_in_parallel(ssh_hosts, tmp_path):
    def work(host: BedHost) -> tuple[str, str, bytes]:
        payload = f"state of {host.name} {secrets.token_hex(8)}\n".encode()
        local = tmp_path / f"{host.name}.in"
        local.write_bytes(payload)
        back = tmp_path / f"{host.name}.out"
        with open_ssh(host) as conn:
            who = conn.run('id -un; printf "%s\\n" "$HOME"')
            conn.put(local, "~/parallel/state.txt", mode=0o640)
            conn.get("~/parallel/state.txt", back)
        assert who.ok, who.stderr
        assert back.read_bytes() == payload
        return host.name, who.stdout, payload

    with ThreadPoolExecutor(max_workers=len(ssh_hosts)) as pool:
        results = list(pool.map(work, ssh_hosts))

    assert len(ssh_hosts) == 4
    for host, (_, who, payload) in zip(ssh_hosts, results, strict=True):
        assert who == f"{host.user}\n{host.home}\n"
        written = host.home / "parallel" / "state.txt"
        assert written.read_bytes() == payload  # in this host's own state dir, nobody else's
        info = written.stat()
        assert info.st_mode & 0o777 == 0o640
        assert info.st_uid == host.home.stat().st_uid


def test_one_connection_is_reused_for_every_call(ssh_hosts, tmp_path):
    host = ssh_hosts[2]
    logins_before = host.logins()
    local = tmp_path / "f"
    local.write_text("x")
    with open_ssh(host) as conn:
        assert conn.round_trips == 0
        for n in range(5):
            assert conn.run(f"echo {n}").stdout == f"{n}\n"
        conn.put(local, "~/reuse/f")
        conn.get("~/reuse/f", tmp_path / "g")
        assert conn.round_trips == 5
    assert host.logins() - logins_before == 1


def test_a_key_held_by_ssh_agent_logs_in(ssh_hosts, tmp_path, monkeypatch):
    """No key file and no ~/.ssh keys: only the agent holds the key. Without the agent the same
    login is refused, so it is the agent that logs in."""
    host = ssh_hosts[1]
    monkeypatch.setenv("HOME", str(tmp_path))  # paramiko finds no ~/.ssh/id_* keys here
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(HostUnreachable), open_ssh(host, key_file=None) as conn:
        conn.run("true")
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL
    )  # -D: in the foreground, so the test owns its pid
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", "-q", str(host.key_file)], env=env, check=True, timeout=30)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        with open_ssh(host, key_file=None) as conn:
            assert conn.run("id -un").stdout.strip() == host.user
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_threads_share_one_connection(ssh_hosts):
    host = ssh_hosts[3]
    logins_before = host.logins()
    with open_ssh(host) as conn, ThreadPoolExecutor(max_workers=6) as pool:
        outputs = list(pool.map(lambda n: conn.run(f"echo {n}").stdout, range(6)))
        assert conn.round_trips == 6
    assert outputs == [f"{n}\n" for n in range(6)]
    assert host.logins() - logins_before == 1


def test_a_failing_command_returns_its_exit_code(ssh_hosts):
    with open_ssh(ssh_hosts[0]) as conn:
        result = conn.run("echo out; echo err >&2; exit 7")
    assert (result.rc, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert not result.ok


def test_a_command_killed_by_a_signal_returns_255(ssh_hosts):
    with open_ssh(ssh_hosts[0]) as conn:
        killed = conn.run("kill -KILL $PPID")  # the login shell: sshd reports exit-signal
        assert killed.rc == 255
        assert conn.run("echo alive").stdout == "alive\n"


def test_large_stdin_and_stdout_stream_both_ways(ssh_hosts):
    data = os.urandom(3 * 1024 * 1024).hex().encode()  # 6 MB: larger than the SSH windows
    with open_ssh(ssh_hosts[0]) as conn:
        result = conn.run("cat; printf done >&2", stdin=data)
    assert result.rc == 0
    assert result.stdout.encode() == data
    assert result.stderr == "done"


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_stdout_reaches_on_stdout_while_the_command_still_runs(ssh_hosts, where):
    # The command waits for a file that only the callback creates, on seeing the first line:
    # without streaming it would wait until its timeout (rc 124).
    shared = Path(tempfile.mkdtemp(dir="/tmp"))  # the bed's users cannot enter pytest's tmp
    shared.chmod(0o777)
    mark = shared / "seen-first"
    seen: list[bytes] = []

    def on_stdout(chunk: bytes) -> None:
        seen.append(chunk)
        if b"first" in b"".join(seen):
            mark.touch()

    script = f"echo first; while [ ! -e {mark} ]; do sleep 0.05; done; echo second"
    conn = open_ssh(ssh_hosts[0]) if where == "ssh" else LocalConnection()
    try:
        with conn:
            result = conn.run(script, timeout=20, on_stdout=on_stdout)
    finally:
        shutil.rmtree(shared)
    assert result.rc == 0, result.stderr
    assert b"".join(seen) == result.stdout.encode() == b"first\nsecond\n"


def test_env_values_arrive_unchanged(ssh_hosts):
    with open_ssh(ssh_hosts[0]) as conn:
        result = conn.run('printf "%s|%s" "$A" "$B"', env={"A": "one two", "B": "it's"})
        assert result.stdout == "one two|it's"
        with pytest.raises(ValueError):
            conn.run("true", env={"BAD NAME": "x"})


@pytest.mark.parametrize("become", [False, True])
def test_a_command_past_its_timeout_returns_124_and_is_ended(ssh_hosts, become):
    host = host_with_sudo(ssh_hosts, "nopasswd")
    pid_file = host.home / f"timeout-{become}.pid"
    with open_ssh(host) as conn:
        result = conn.run(f"echo $$ > {pid_file}; exec sleep 60", timeout=1, become=become)
        assert result.rc == 124
        assert "timed out" in result.stderr
        assert conn.run("echo still usable").stdout == "still usable\n"
    pid = int(pid_file.read_text())
    assert _wait_until_gone(pid), f"the timed-out command (pid {pid}) still runs"


def test_shell_metacharacters_arrive_literally(ssh_hosts, tmp_path):
    pwned = Path("/tmp") / f"toolkit-pwned-{secrets.token_hex(8)}"
    value = (
        f"$(touch {pwned}) `touch {pwned}`; touch {pwned} && touch {pwned} | touch {pwned}\n"
        f"it's \"quoted\" 'single' \\ back * ? ~ $HOME ${{HOME}} > {pwned}"
    )
    host = host_with_sudo(ssh_hosts, "nopasswd")
    with open_ssh(host) as conn:
        plain = conn.run(f"printf '%s' {quote(value)}")
        as_root = conn.run(f"printf '%s' {quote(value)}", become=True)
        through_env = conn.run('printf "%s" "$VALUE"', env={"VALUE": value})
        as_argument = conn.run(f"set -- {quote(value)}; printf '%s' \"$1\"")
    for result in (plain, as_root, through_env, as_argument):
        assert result.rc == 0, result.stderr
        assert result.stdout == value
    assert not pwned.exists()


def test_put_is_atomic_and_leaves_no_temporary_file(ssh_hosts, tmp_path):
    host = ssh_hosts[1]
    local = tmp_path / "model.cfg"
    with open_ssh(host) as conn:
        local.write_text("first\n")
        conn.put(local, "~/atomic/model.cfg", mode=0o600)
        # A hard link keeps the old file: a rename replaces the name, an in-place write would
        # change what the link sees too.
        assert conn.run("ln ~/atomic/model.cfg ~/atomic/old-inode").ok
        local.write_text("second\n")
        conn.put(local, "~/atomic/model.cfg", mode=0o600)
        assert conn.run("cat ~/atomic/model.cfg").stdout == "second\n"
        assert conn.run("cat ~/atomic/old-inode; rm ~/atomic/old-inode").stdout == "first\n"

        # A put that cannot complete (the destination is a directory) cleans up after itself.
        conn.run("mkdir -p ~/atomic/taken/inner")
        with pytest.raises(OSError):
            conn.put(local, "~/atomic/taken", mode=0o600)
    assert sorted(p.name for p in (host.home / "atomic").iterdir()) == ["model.cfg", "taken"]
    assert (host.home / "atomic" / "model.cfg").stat().st_mode & 0o777 == 0o600


def test_put_to_an_absolute_path_creates_parents(ssh_hosts, tmp_path):
    host = ssh_hosts[1]
    local = tmp_path / "a"
    local.write_text("abs")
    target = host.home / "deep" / "er" / "a.txt"
    with open_ssh(host) as conn:
        conn.put(local, str(target))
    assert target.read_text() == "abs"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_get_of_a_missing_file_raises_and_leaves_nothing(ssh_hosts, tmp_path):
    with open_ssh(ssh_hosts[1]) as conn, pytest.raises(FileNotFoundError):
        conn.get("~/no/such/file", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# -- failing to connect ----------------------------------------------------------------------


def test_nothing_listening_is_unreachable(ssh_hosts):
    host = ssh_hosts[0]
    with refusing_port() as down:
        conn = open_ssh(host, port=down.getsockname()[1], connect_timeout=5)
        with pytest.raises(HostUnreachable, match="refused") as caught:
            conn.run("true")
    assert not isinstance(caught.value, HostKeyRejected)
    assert "\n" not in str(caught.value)


def test_a_server_that_never_speaks_times_out(ssh_hosts):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        conn = open_ssh(ssh_hosts[0], port=silent.getsockname()[1], connect_timeout=1)
        with pytest.raises(HostUnreachable, match="banner|timed out"):
            conn.run("true")


def test_a_key_the_host_does_not_accept_fails_authentication(ssh_hosts, tmp_path):
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(HostUnreachable, match="authentication failed"):
        open_ssh(ssh_hosts[0], key_file=stranger).run("true")


def test_a_missing_key_file_is_reported(ssh_hosts, tmp_path):
    with pytest.raises(HostUnreachable, match="does not exist"):
        open_ssh(ssh_hosts[0], key_file=tmp_path / "nope").run("true")


# -- host keys -------------------------------------------------------------------------------


def test_strict_policy_refuses_an_unknown_host_key(ssh_hosts, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    conn = open_ssh(ssh_hosts[0], known_hosts=known)
    with pytest.raises(HostKeyRejected, match="unknown"):
        conn.run("true")
    assert known.read_text() == ""


def test_strict_policy_refuses_without_a_known_hosts_file(ssh_hosts, tmp_path):
    conn = open_ssh(ssh_hosts[0], known_hosts=tmp_path / "absent")
    with pytest.raises(HostKeyRejected):
        conn.run("true")
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_a_changed_host_key_is_refused(ssh_hosts, tmp_path, policy):
    host = ssh_hosts[0]
    other = keygen(tmp_path / "other_host_key")
    other_key = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    known = tmp_path / "known_hosts"
    known.write_text(f"[{host.address}]:{host.port} {other_key}\n")
    conn = open_ssh(host, known_hosts=known, host_key_policy=policy)
    with pytest.raises(HostKeyRejected, match="CHANGED"):
        conn.run("true")
    assert known.read_text() == f"[{host.address}]:{host.port} {other_key}\n"


def test_accept_new_records_an_unknown_key_then_strict_accepts_it(ssh_hosts, tmp_path):
    host = ssh_hosts[1]
    known = tmp_path / "ssh" / "known_hosts"
    with open_ssh(host, known_hosts=known, host_key_policy="accept-new") as conn:
        assert conn.run("echo hi").stdout == "hi\n"
    assert known.read_text() == host.known_hosts_line + "\n"
    with open_ssh(host, known_hosts=known, host_key_policy="strict") as conn:
        assert conn.run("echo again").stdout == "again\n"
    assert known.read_text() == host.known_hosts_line + "\n"


# -- become ----------------------------------------------------------------------------------


def test_become_with_passwordless_sudo(ssh_hosts):
    host = host_with_sudo(ssh_hosts, "nopasswd")
    with open_ssh(host) as conn:
        assert conn.run("id -u", become=True).stdout == "0\n"
        assert conn.run("id -u").stdout != "0\n"
        piped = conn.run("cat", become=True, stdin=b"through sudo\n")
        assert piped.stdout == "through sudo\n"


def test_become_by_default_when_the_host_says_so(ssh_hosts):
    host = host_with_sudo(ssh_hosts, "nopasswd")
    with open_ssh(host, become=True) as conn:
        assert conn.run("id -u").stdout == "0\n"


def test_become_with_a_sudo_password(ssh_hosts):
    host = host_with_sudo(ssh_hosts, "password")
    with open_ssh(host, become_password=host.sudo_password) as conn:
        for _ in range(2):  # the second time sudo may have cached it: must still work
            result = conn.run("id -u; cat", become=True, stdin=b"payload\n")
            assert (result.rc, result.stdout, result.stderr) == (0, "0\npayload\n", "")
        assert conn.run("id -u").stdout != "0\n"


def test_a_wrong_sudo_password_fails_without_hanging(ssh_hosts):
    host = host_with_sudo(ssh_hosts, "password")
    wrong = "wrong-" + secrets.token_hex(4)
    with open_ssh(host, become_password=wrong) as conn:
        result = conn.run("id -u", become=True)
    assert result.rc != 0
    assert "0\n" not in result.stdout
    assert wrong not in result.stdout + result.stderr


def test_sudo_without_a_password_when_one_is_needed_fails(ssh_hosts):
    host = host_with_sudo(ssh_hosts, "password")
    with open_ssh(host) as conn:
        result = conn.run("id -u", become=True)
    assert result.rc != 0
    assert "password is required" in result.stderr


def test_a_password_never_reaches_the_command_when_sudo_needs_none(ssh_hosts):
    host = host_with_sudo(ssh_hosts, "nopasswd")
    secret = "secret-" + secrets.token_hex(8)
    with open_ssh(host, become_password=secret) as conn:
        result = conn.run("id -u; cat", become=True)
    assert result.rc == 0
    assert result.stdout == "0\n"
    assert secret not in result.stderr
    assert secret not in repr(conn)


def test_become_on_a_host_without_sudo_rights_fails(ssh_hosts):
    host = host_with_sudo(ssh_hosts, "none")
    with open_ssh(host) as conn:
        result = conn.run("id -u", become=True)
    assert result.rc != 0


# -- jump hosts, inventories, the bed itself ---------------------------------------------------


def test_a_jump_host_carries_the_connection(ssh_hosts):
    jump, target = ssh_hosts[0], ssh_hosts[1]
    jump_logins, target_logins = jump.logins(), target.logins()
    spec = f"{jump.user}@{jump.address}:{jump.port}"
    with open_ssh(target, jump=spec) as conn:
        assert conn.run("id -un").stdout == f"{target.user}\n"
        assert conn.run("true").ok
    assert jump.logins() - jump_logins == 1
    assert target.logins() - target_logins == 1


# -- ssh_config, as OpenSSH and Ansible read it ------------------------------------------------


def inventory_host(tmp_path: Path, name: str, **host_vars) -> Host:
    """``name`` in a one-host YAML inventory with ``host_vars``, through the real loader."""
    path = tmp_path / f"inventory-{secrets.token_hex(3)}.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {name: host_vars or None}}}))
    return load_inventory(path).hosts[name]


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_a_host_reached_only_through_an_ssh_config_alias(ssh_hosts, tmp_path, monkeypatch):
    host = ssh_hosts[2]
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    config = write_config(
        tmp_path / "ssh_config",
        f"""\
        Host gpu-01
            HostName {host.address}
            Port {host.port}
            User {host.user}
            IdentityFile {host.key_file}
            UserKnownHostsFile {host.known_hosts}
        """,
    )
    # the way Ansible users name a config file: -F in the ssh arguments
    by_flag = inventory_host(tmp_path, "gpu-01", ansible_ssh_common_args=f"-F {config}")
    with connect(by_flag) as conn:
        assert conn.run("id -un").stdout == f"{host.user}\n"
    # or $TOOLKIT_SSH_CONFIG, for every host
    monkeypatch.setenv(sshconfig.ENV_VAR, str(config))
    with connect(inventory_host(tmp_path, "gpu-01")) as conn:
        assert conn.run("id -un").stdout == f"{host.user}\n"
    # or ~/.ssh/config, with an Include as users split theirs
    monkeypatch.delenv(sshconfig.ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".ssh" / "config.d").mkdir(parents=True)
    (tmp_path / "home" / ".ssh" / "config.d" / "gpu").write_text(config.read_text())
    (tmp_path / "home" / ".ssh" / "config").write_text("Include config.d/*\n")
    with connect(inventory_host(tmp_path, "gpu-01")) as conn:
        assert conn.run("id -un").stdout == f"{host.user}\n"


@pytest.mark.parametrize(
    "args, error",
    [
        ("-F /nonexistent", "ssh config file /nonexistent .* does not exist"),
        ("-o Port=abc", 'ssh option port: "abc" is not a number'),
    ],
)
def test_unusable_ssh_settings_are_a_one_line_error(tmp_path, args, error):
    conn = connect(inventory_host(tmp_path, "gpu-01", ansible_ssh_common_args=args))
    with pytest.raises(HostUnreachable, match=f"^gpu-01: .*{error}") as caught:
        conn.run("true")
    assert "\n" not in str(caught.value)


def test_inventory_values_win_over_ssh_args_which_win_over_ssh_config(ssh_hosts, tmp_path):
    host = ssh_hosts[2]
    with refusing_port() as down:
        closed = down.getsockname()[1]
        config = write_config(
            tmp_path / "ssh_config",
            f"""\
            Host {host.address}
                Port {closed}
                User nobody-here
                IdentityFile {host.key_file}
                UserKnownHostsFile {host.known_hosts}
            """,
        )
        args = f"-F {config}"
        cases = [
            # ssh_config alone: its wrong port and user; then what overrides them
            ({"ansible_ssh_common_args": args}, False),
            ({"ansible_ssh_common_args": f"{args} -o Port={host.port} -o User={host.user}"}, True),
            (
                {
                    "ansible_ssh_common_args": args,
                    "ansible_ssh_extra_args": f"-p {host.port}",
                    "ansible_user": host.user,
                },
                True,
            ),  # fmt: skip
            # the inventory's own port beats an -o Port in the arguments
            (
                {
                    "ansible_ssh_common_args": f"{args} -o Port={closed}",
                    "ansible_port": host.port,
                    "ansible_user": host.user,
                },
                True,
            ),  # fmt: skip
        ]
        for host_vars, reaches in cases:
            inv = inventory_host(tmp_path, "node", ansible_host=host.address, **host_vars)
            with connect(inv, connect_timeout=5) as conn:
                if reaches:
                    assert conn.run("id -un").stdout == f"{host.user}\n", host_vars
                else:
                    with pytest.raises(HostUnreachable, match="refused"):
                        conn.run("true")


def test_a_wrong_identity_file_is_named_in_a_one_line_error(ssh_hosts, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    host = ssh_hosts[0]
    stranger = keygen(tmp_path / "stranger_key")
    for key, expected in ((stranger, f"{stranger}"), (tmp_path / "gone", "does not exist")):
        config = write_config(
            tmp_path / "ssh_config",
            f"""\
            Host gpu-02
                HostName {host.address}
                Port {host.port}
                User {host.user}
                IdentityFile {key}
                UserKnownHostsFile {host.known_hosts}
            """,
        )
        inv = inventory_host(tmp_path, "gpu-02", ansible_ssh_common_args=f"-F {config}")
        with pytest.raises(HostUnreachable) as caught:
            connect(inv).run("true")
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith("gpu-02 (")
        assert "authentication failed" in message
        assert f"IdentityFile {key}" in message and expected in message


UNREACHABLE_SCRIPT = """
import sys
from toolkit.hosts.connection import HostUnreachable
from toolkit.hosts.ssh import SSHConnection
conn = SSHConnection("far-away", "127.0.0.1", port=int(sys.argv[1]), connect_timeout=1)
try:
    conn.run("true")
except HostUnreachable as exc:
    print(exc)
"""


def test_an_unreachable_host_prints_no_traceback(tmp_path):
    with socket.socket() as silent, refusing_port() as down:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts, never speaks: paramiko's transport thread fails on its own
        for port in (silent.getsockname()[1], down.getsockname()[1]):
            proc = subprocess.run(
                [sys.executable, "-c", UNREACHABLE_SCRIPT, str(port)],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
            )
            assert proc.stderr == ""
            assert len(proc.stdout.splitlines()) == 1
            assert proc.stdout.startswith("far-away (")


# -- a host only a jump host can reach -----------------------------------------------------------


@pytest.fixture(scope="module")
def jump_bed():
    with SSHBed(count=2, behind_jump=True) as bed:
        yield bed


def jump_config(bed: SSHBed, path: Path, jump_key: Path | None = None) -> Path:
    jump, target = bed.hosts
    return write_config(
        path,
        f"""\
        Host gpu-inner
            HostName {target.address}
            Port {target.port}
            User {target.user}
            IdentityFile {target.key_file}
            ProxyJump bastion
        Host bastion
            HostName {jump.address}
            Port {jump.port}
            User {jump.user}
            IdentityFile {jump_key or jump.key_file}
        Host *
            IdentitiesOnly yes
            UserKnownHostsFile {bed.known_hosts}
        """,
    )


def test_the_target_refuses_a_direct_login(jump_bed):
    target = jump_bed.hosts[1]
    with pytest.raises(HostUnreachable, match="refused"):
        open_ssh(target, connect_timeout=5).run("true")


def test_a_host_behind_a_jump_host_in_ssh_config(jump_bed, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    jump, target = jump_bed.hosts
    before = jump.logins(), target.logins()
    config = jump_config(jump_bed, tmp_path / "ssh_config")
    inv = inventory_host(tmp_path, "gpu-inner", ansible_ssh_common_args=f"-F {config}")
    payload = secrets.token_bytes(300_000)
    with connect(inv) as conn:
        assert conn.run("id -un").stdout == f"{target.user}\n"
        conn.put_bytes(payload, "~/behind/blob")
        assert conn.run("cat ~/behind/blob | wc -c").stdout.strip() == str(len(payload))
    assert (target.home / "behind" / "blob").read_bytes() == payload
    assert (jump.logins() - before[0], target.logins() - before[1]) == (1, 1)


def test_proxy_jump_for_every_host_does_not_loop_through_the_jump_host(jump_bed, tmp_path):
    jump, target = jump_bed.hosts
    config = write_config(
        tmp_path / "ssh_config",
        f"""\
        Host gpu-inner
            HostName {target.address}
            Port {target.port}
            User {target.user}
        Host bastion
            HostName {jump.address}
            Port {jump.port}
            User {jump.user}
        Host *
            ProxyJump bastion
            IdentityFile {target.key_file}
            UserKnownHostsFile {jump_bed.known_hosts}
        """,
    )
    inv = inventory_host(tmp_path, "gpu-inner", ansible_ssh_common_args=f"-F {config}")
    jump_logins = jump.logins()
    with connect(inv) as conn:
        assert conn.run("id -un").stdout == f"{target.user}\n"
    assert jump.logins() - jump_logins == 1  # not bastion through bastion


@pytest.mark.parametrize("flag", ["-o ProxyJump={}", "-J {}", "-o 'ProxyJump {}'"])
def test_a_jump_host_from_the_ansible_ssh_args(jump_bed, tmp_path, flag):
    jump, target = jump_bed.hosts
    spec = f"{jump.user}@{jump.address}:{jump.port}"
    inv = inventory_host(
        tmp_path,
        "inner",
        **target.inventory_vars(),
        ansible_ssh_common_args=flag.format(spec),
    )
    with connect(inv, known_hosts=jump_bed.known_hosts) as conn:
        assert conn.run("id -un").stdout == f"{target.user}\n"


def test_a_proxy_command_in_ssh_config(jump_bed, tmp_path):
    jump, target = jump_bed.hosts
    config = write_config(
        tmp_path / "ssh_config",
        f"""\
        Host gpu-inner
            HostName {target.address}
            Port {target.port}
            User {target.user}
            IdentityFile {target.key_file}
            UserKnownHostsFile {jump_bed.known_hosts}
            ProxyCommand ssh -F none -i {jump.key_file} -o BatchMode=yes -o UserKnownHostsFile={jump_bed.known_hosts} -p {jump.port} -W %h:%p {jump.user}@{jump.address}
        """,  # noqa: E501
    )
    inv = inventory_host(tmp_path, "gpu-inner", ansible_ssh_common_args=f"-F {config}")
    with connect(inv) as conn:
        assert conn.run("id -un").stdout == f"{target.user}\n"


def test_a_jump_host_that_refuses_is_named_not_the_target(jump_bed, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    jump, target = jump_bed.hosts
    stranger = keygen(tmp_path / "stranger_key")
    config = jump_config(jump_bed, tmp_path / "ssh_config", jump_key=stranger)
    inv = inventory_host(tmp_path, "gpu-inner", ansible_ssh_common_args=f"-F {config}")
    with pytest.raises(HostUnreachable) as caught:
        connect(inv).run("true")
    message = str(caught.value)
    assert message.startswith(
        f"gpu-inner: jump host bastion ({jump.user}@{jump.address}:{jump.port}): "
        "authentication failed"
    )
    assert f"{target.port}" not in message and "\n" not in message

    with refusing_port() as down:
        spec = f"{jump.user}@127.0.0.1:{down.getsockname()[1]}"
        inv = inventory_host(tmp_path, "inner", **target.inventory_vars(), ansible_jump_host=spec)
        with pytest.raises(HostUnreachable, match=f"^inner: jump host {spec}: connection refused"):
            connect(inv, known_hosts=jump_bed.known_hosts).run("true")


def test_a_jump_host_that_cannot_reach_the_target_says_so(jump_bed, tmp_path):
    jump, target = jump_bed.hosts
    spec = f"{jump.user}@{jump.address}:{jump.port}"
    inv = inventory_host(
        tmp_path, "inner", **{**target.inventory_vars(), "ansible_port": 1}, ansible_jump_host=spec
    )
    with pytest.raises(HostUnreachable, match=f"^inner: jump host {spec} cannot reach 127.0.0.1:1"):
        connect(inv, known_hosts=jump_bed.known_hosts).run("true")


def test_parse_host_spec():
    assert parse_host_spec("me@bastion:2222") == ("me", "bastion", 2222)
    assert parse_host_spec("bastion") == (None, "bastion", None)
    assert parse_host_spec("ssh://me@[::1]:22") == ("me", "::1", 22)
    with pytest.raises(ValueError):
        parse_host_spec("me@host:99999")


def test_connect_opens_the_right_connection_from_an_inventory(ssh_bed, tmp_path):
    path = ssh_bed.write_inventory(tmp_path / "bed.yml")
    with (tmp_path / "bed.yml").open("a") as f:
        f.write("    local:\n      hosts:\n        localhost:\n")
    inventory = load_inventory(path)
    assert isinstance(connect(inventory.hosts["localhost"]), LocalConnection)
    for host, bed_host in zip(inventory.select("bed"), ssh_bed.hosts, strict=True):
        with connect(host, known_hosts=ssh_bed.known_hosts) as conn:
            assert isinstance(conn, SSHConnection)
            assert conn.run("id -un").stdout == f"{bed_host.user}\n"


def test_the_bed_stops_every_daemon_it_started():
    with SSHBed(count=2) as bed:
        pids = [host.pid for host in bed.hosts]
        conn = open_ssh(bed.hosts[0])
        assert conn.run("echo up").ok  # leaves a live session process under sshd
        sessions = _children_of(pids[0])
        assert sessions
    conn.close()
    for pid in [*pids, *sessions]:
        assert not _running(pid)


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_until_gone(pid: int) -> bool:
    """Poll (bounded) until the process has exited."""
    for _ in range(100):
        if not _running(pid):
            return True
        time.sleep(0.05)
    return False


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
