"""The command line as an Ansible user types it: options, exit codes, one-line errors, colour.

Every case runs the real command (``python -m toolkit.cli``) in a subprocess. Hosts are this
machine (``ansible_connection=local``, under ``--check`` or ``--list-hosts``), the loopback sshd
bed (tests/sshbed.py) for the login options, and loopback ports that refuse connections or speak
something other than SSH for the unreachable cases.
"""

from __future__ import annotations

import io
import os
import pty
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import refusing_port
from tests.sshbed import ssh_bed, ssh_hosts  # noqa: F401  (fixtures)
from toolkit.cli import EXIT_ERROR, EXIT_OK, EXIT_PENDING, EXIT_USAGE

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 600  # generous: the machine is shared; never asserted


def toolkit_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "TOOLKIT_STATE_DIR": str(tmp / "state"),
        "TOOLKIT_CACHE_DIR": str(tmp / "cache"),
        **extra,
    }


def toolkit(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *args],
        cwd=tmp,
        env=toolkit_env(tmp, **env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


PLAYBOOK = """
- name: runtime only
  hosts: {hosts}
  runtimes:
    llamacpp: {{install: auto}}
"""


@pytest.fixture
def local_site(tmp_path):
    """A playbook with nothing but a runtime, and an inventory of this machine (a data dir in
    tmp_path) plus hosts toolkit cannot reach."""
    write(tmp_path / "site.yml", PLAYBOOK.format(hosts="local"))
    write(
        tmp_path / "inventory" / "hosts.ini",
        f"""
        [local]
        here ansible_connection=local toolkit_data_dir={tmp_path}/data

        [windows]
        win1 ansible_connection=winrm

        [containers]
        box1 ansible_connection=docker
        """,
    )
    return tmp_path


# -- help and usage errors --------------------------------------------------------------------


def test_h_shows_help_with_exit_codes_and_the_ansible_options_that_mean_nothing(tmp_path):
    done = toolkit(tmp_path, "-h")
    assert done.returncode == EXIT_OK and "Exit codes:" in done.stdout
    done = toolkit(tmp_path, "apply", "-h")
    assert done.returncode == EXIT_OK
    text = " ".join(done.stdout.split())
    for option in ("-C, --check", "-D, --diff", "-v, --verbose", "--syntax-check", "--list-hosts",
                   "-u, --user", "--private-key", "-b, --become", "-l, --limit"):  # fmt: skip
        assert option in text, option
    assert "64 usage error" in text and "2 changes pending" in text
    assert "-t/--tags" in text and "--step" in text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["apply", "missing.yml"], "'missing.yml' does not exist"),
        (["apply", "site.yml", "--no-such-option"], "No such option '--no-such-option'"),
        (["apply", "site.yml", "--tags", "web"], "--tags has no meaning in toolkit"),
        (["apply", "site.yml", "--step"], "--step has no meaning in toolkit"),
        (["apply", "site.yml", "-k"], "-k/--ask-pass has no meaning in toolkit: toolkit logs in"),
        (["apply", "site.yml", "-e", "{bad"], "'{bad' is not valid JSON"),
        (["apply", "site.yml", "-e", "@nowhere.yml"], "@nowhere.yml: No such file"),
        (["apply", "site.yml", "-e", "novalue"], "expected key=value"),
        (["apply", "site.yml", "-l", "@nowhere.retry"], "@nowhere.retry: No such file"),
        (["apply", "site.yml", "-i", "missing.ini"], "'missing.ini' does not exist"),
        (["facts", "--nope"], "No such option"),
    ],
)
def test_usage_errors_exit_64_with_one_error_line_and_no_traceback(local_site, args, says):
    done = toolkit(local_site, *args)
    assert done.returncode == EXIT_USAGE, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and says in errors[0], done.stderr
    assert "Traceback" not in done.stderr


# -- reading without running ------------------------------------------------------------------


def test_list_hosts_merges_several_inventories_and_directories(local_site):
    more = write(local_site / "more" / "extra.yml", "local:\n  hosts:\n    there:\n")
    write(local_site / "more" / "other.ini", "[local]\nelsewhere\n")
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory/hosts.ini",
                   "-i", str(more.parent), "--list-hosts")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    listed = [line.strip() for line in done.stdout.splitlines() if line.startswith("      ")]
    assert listed == ["here", "there", "elsewhere"]
    # the inventory directory alone (-i a directory used to be refused)
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "--list-hosts")
    assert done.returncode == EXIT_OK and "hosts (1):" in done.stdout


def test_limit_from_a_file_and_subscripts(local_site):
    write(local_site / "site.yml", PLAYBOOK.format(hosts="all"))
    retry = write(local_site / "failed.retry", "box1\nwin1\n")
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "--list-hosts",
                   "-l", f"@{retry}")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    assert [ln.strip() for ln in done.stdout.splitlines() if ln.startswith("      ")] == [
        "win1",
        "box1",
    ]
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "--list-hosts",
                   "-l", "all[-1]")  # fmt: skip
    assert [ln.strip() for ln in done.stdout.splitlines() if ln.startswith("      ")] == ["box1"]


def test_syntax_check_renders_with_extra_vars_from_a_file(local_site):
    write(local_site / "site.yml", """
        - hosts: local
          runtimes: {llamacpp: }
          proxy: {port: "{{ proxy_port }}"}
        """)  # fmt: skip
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "--syntax-check")
    assert done.returncode == EXIT_ERROR
    assert "site.yml:3:" in done.stderr and "'proxy_port' is undefined" in done.stderr
    write(local_site / "vars.yml", "proxy_port: 8123\n")
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "--syntax-check",
                   "-e", "@vars.yml")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    assert "syntax and values OK" in done.stdout
    # key=value pairs, several in one -e, as Ansible
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "--syntax-check",
                   "-e", "proxy_port=8124 other='a b'")  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr


# -- running on this machine ------------------------------------------------------------------


def test_check_exits_2_when_changes_are_pending_and_vv_shows_what_ran(local_site):
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "-C", "-vv")
    assert done.returncode == EXIT_PENDING, done.stderr
    assert "would change" in done.stdout
    ran = [
        line for line in done.stdout.splitlines() if line.startswith("here:") and " run " in line
    ]
    assert ran and all(" s " in line and "rc=" in line for line in ran), done.stdout
    assert not (local_site / "data").exists() or not any((local_site / "data").iterdir())
    assert "here:     finished  in " in done.stdout
    quiet = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "-C")
    assert quiet.returncode == EXIT_PENDING and " run " not in quiet.stdout
    assert "finished" not in quiet.stdout


def test_hosts_toolkit_cannot_reach_fail_alone_and_only_when_targeted(local_site):
    # not targeted: the inventory is fine
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "-C")
    assert done.returncode == EXIT_PENDING, done.stderr
    # targeted: each is refused with its reason, the local host is still worked on
    write(local_site / "site.yml", PLAYBOOK.format(hosts="all"))
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "-C")
    assert done.returncode == EXIT_ERROR
    assert 'win1: UNREACHABLE: host win1: connection "winrm" (set at ' in done.stdout
    assert 'box1: UNREACHABLE: host box1: connection "docker"' in done.stdout
    assert "here: would change" in " ".join(done.stdout.split())
    assert "Traceback" not in done.stderr


def test_a_failed_run_writes_a_retry_file_for_l_at(local_site):
    write(local_site / "site.yml", PLAYBOOK.format(hosts="all"))
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "-C")
    assert done.returncode == EXIT_ERROR
    retry = local_site / "state" / "retry" / "site.retry"
    assert retry.read_text() == "box1\nwin1\n"
    assert f"-l @{retry}" in done.stdout
    done = toolkit(local_site, "apply", "site.yml", "-i", "inventory", "--list-hosts",
                   "-l", f"@{retry}")  # fmt: skip
    assert [ln.strip() for ln in done.stdout.splitlines() if ln.startswith("      ")] == [
        "win1",
        "box1",
    ]


# -- unreachable hosts: one line, no traceback --------------------------------------------------


class NotSSH:
    """A loopback server that answers every connection with an HTTP error and closes it: what
    a port forwarded to the wrong service looks like to an SSH client."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        end = time.monotonic() + TIMEOUT
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.sock.close()


def test_unreachable_hosts_are_one_line_each_and_facts_exits_1(tmp_path):
    refused = refusing_port()
    not_ssh = NotSSH()
    try:
        write(tmp_path / "hosts.ini", f"""
            [web]
            down ansible_host=127.0.0.1 ansible_port={refused.getsockname()[1]}
            wrong ansible_host=127.0.0.1 ansible_port={not_ssh.port}
            """)  # fmt: skip
        done = toolkit(tmp_path, "facts", "-i", "hosts.ini")
        write(tmp_path / "site.yml", PLAYBOOK.format(hosts="web"))
        applied = toolkit(tmp_path, "apply", "site.yml", "-i", "hosts.ini")
    finally:
        not_ssh.close()
        refused.close()
    assert done.returncode == EXIT_ERROR
    assert "Traceback" not in done.stderr and "paramiko" not in done.stderr
    assert "connection refused" in done.stdout and "down" in done.stdout
    assert "error: no facts from down, wrong" in done.stderr
    assert applied.returncode == EXIT_ERROR
    assert "Traceback" not in applied.stderr and "paramiko" not in applied.stderr
    unreachable = [line for line in applied.stdout.splitlines() if "UNREACHABLE" in line]
    assert len(unreachable) == 2 and all(line.count("\n") == 0 for line in unreachable)


# -- login options on the loopback sshd bed ---------------------------------------------------


def test_u_private_key_and_b_reach_a_host_whose_inventory_sets_none(tmp_path, ssh_hosts):  # noqa: F811
    host = next(h for h in ssh_hosts if h.sudo == "nopasswd")
    write(tmp_path / "hosts.ini", f"""
        [bed]
        {host.name} ansible_host={host.address} ansible_port={host.port} ansible_ssh_common_args="-o UserKnownHostsFile={host.known_hosts}"
        """)  # fmt: skip
    without = toolkit(tmp_path, "facts", "-i", "hosts.ini", "--json")
    assert without.returncode == EXIT_ERROR
    login = ["-u", host.user, "--private-key", str(host.key_file)]
    done = toolkit(tmp_path, "facts", "-i", "hosts.ini", "--json", *login)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert '"uid": 0' not in done.stdout
    became = toolkit(tmp_path, "facts", "-i", "hosts.ini", "--json", *login, "-b")
    assert became.returncode == EXIT_OK, became.stdout + became.stderr
    assert '"uid": 0' in became.stdout


# -- colour -----------------------------------------------------------------------------------


def run_on_a_terminal(tmp: Path, args: list[str], **env: str) -> bytes:
    """The command's output as a terminal receives it (stdout and stderr on one pty)."""
    main, other = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", *args],
        cwd=tmp,
        env=toolkit_env(tmp, **env),
        stdin=subprocess.DEVNULL,
        stdout=other,
        stderr=other,
    )
    os.close(other)
    out = io.BytesIO()
    end = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([main], [], [], 1)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the pty closes when the process exits
                    break
                if not chunk:
                    break
                out.write(chunk)
            elif proc.poll() is not None:
                break
    finally:
        proc.wait(timeout=TIMEOUT)
        os.close(main)
    return out.getvalue()


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_color_and_dumb_terminals_get_no_escape_codes(local_site, env):
    args = ["apply", "site.yml", "-i", "inventory", "-C"]
    coloured = run_on_a_terminal(local_site, args, TERM="xterm")
    assert b"\x1b[" in coloured  # the test can fail: a terminal does get colour
    plain = run_on_a_terminal(local_site, args, **{"TERM": "xterm", **env})
    assert b"\x1b[" not in plain and b"PLAY RECAP" in plain
    error = run_on_a_terminal(local_site, [*args, "-l", "nohost"], **{"TERM": "xterm", **env})
    assert b"error:" in error and b"\x1b[" not in error


# -- the recap counts what was applied --------------------------------------------------------


def test_a_failed_apply_recap_counts_only_the_applied_changes():
    from toolkit.engine import HostResult
    from toolkit.report import Reporter, changed_count

    planned = [object(), object(), object()]
    result = HostResult("h1", "play", changes=planned, applied=1, failed=True, error="boom")  # type: ignore[arg-type]
    out = io.StringIO()
    Reporter(stream=out).recap([result], 1.0, check=False)
    assert "changed=1 " in out.getvalue()
    assert changed_count(result, check=True) == 3  # under --check: what would change
    out = io.StringIO()
    Reporter(json_events=True, stream=out).recap([result], 1.0, check=False)
    assert '"changed": 1' in out.getvalue()
