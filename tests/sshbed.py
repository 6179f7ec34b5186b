"""A real OpenSSH test bed on loopback: N independent ``sshd`` daemons, each a separate "host".

Each host has its own sshd (``/usr/sbin/sshd -D -f <its config>``) on 127.0.0.1 and a free port,
its own host key, its own OS user (``tkhost1``, ``tkhost2``, ...) whose home directory
(/var/tmp/toolkit-sshbed/<user>, emptied at start and stop) is that host's private state
directory, and accepts one ed25519 client key generated for the session.
A known_hosts file lists every host key. Some users may use sudo, without a password or with one.

In tests, take the shared session bed (started once per pytest session, however many modules
use it; tests/conftest.py should import these fixtures)::

    from tests.sshbed import ssh_bed, ssh_hosts   # fixtures

    def test_something(ssh_hosts):
        host = ssh_hosts[0]                 # BedHost: name, port, user, key_file, known_hosts...
        host.inventory_vars()               # {"ansible_host": "127.0.0.1", "ansible_port": ...}

or a private bed of any size::

    with SSHBed(count=8) as bed:
        ...

or a bed whose hosts only a jump host can reach (``behind_jump=True``): every sshd runs in a
network namespace made for the bed; ``bed.hosts[0]`` (the jump host) listens on the namespace's
end of a veth pair, the only address of the namespace this machine can reach, and the other
hosts listen on the namespace's own loopback (127.0.0.1 inside it, at a port this bed holds
closed on the machine's loopback, so a direct attempt is refused). Needs ``ip`` (iproute2).

or a bed of hosts on a switched network (``switched=True``): each sshd in a network namespace of
its own, all joined by a bridge in a "switch" namespace, which this machine (the workstation)
reaches through a veth of its own; with ``rate_mbit`` every link (each host's, and the
workstation's uplink) is limited to that rate in each direction (``tc qdisc ... tbf``). Hosts
reach each other on the bridge (their addresses are ``host.address``). Needs ``ip`` and ``tc``.

Needs root (to run sshd and create users) and the Debian packages openssh-server and sudo.
Without them the tests that use the bed fail, saying what is missing; set TOOLKIT_SKIP_SSHBED=1
to skip them instead on a machine that cannot have them.
Everything started is stopped by pid at the end; the OS users stay (their sudo rights do not).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
SUDOERS_DIR = Path("/etc/sudoers.d")
LOCK_DIR = Path(tempfile.gettempdir())
HOMES = Path("/var/tmp/toolkit-sshbed")  # fixed per user: usermod cannot move a busy user
MAX_SLOTS = 16  # independent beds that may run at once on one machine (one per pytest session)
START_ATTEMPTS = 5  # ports tried per host when another process takes the one we picked
READY_TIMEOUT = 15.0  # seconds for one sshd to listen
STOP_TIMEOUT = 5.0  # seconds for a process to exit after SIGTERM before SIGKILL

# sudo rights of the shared bed's hosts, in order; "none" | "nopasswd" | "password"
SHARED_SUDO = ("nopasswd", "password", "nopasswd", "none")


class BedUnavailable(RuntimeError):
    """This machine cannot run the bed (not root, or sshd / ssh-keygen / sudo missing)."""


@dataclass
class BedHost:
    name: str  # inventory name, the same as the OS user
    port: int
    user: str
    key_file: Path  # the client private key that logs in
    known_hosts: Path  # lists every host of the bed
    home: Path  # the user's home: this host's state directory
    dir: Path  # sshd's config, host key and log (not writable by the user)
    host_key: str  # "ssh-ed25519 AAAA..." public host key
    sudo: str  # "none" | "nopasswd" | "password"
    sudo_password: str | None = field(default=None, repr=False)
    address: str = "127.0.0.1"
    process: subprocess.Popen | None = field(default=None, repr=False)
    netns: str | None = None  # the network namespace sshd runs in, if any
    direct: bool = True  # this machine can reach address:port (False: only through the jump)

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def known_hosts_line(self) -> str:
        where = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{where} {self.host_key}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def inventory_vars(self) -> dict:
        """This host's entry in an Ansible inventory."""
        return {
            "ansible_host": self.address,
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.key_file),
        }

    def connect(self, **options):
        """An SSHConnection to this host with its key and known_hosts (no ssh_config read)."""
        from toolkit.hosts.ssh import SSHConnection

        settings = {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "key_file": self.key_file,
            "known_hosts": self.known_hosts,
            "connect_timeout": 10.0,
            "ssh_config": "none",
        }
        return SSHConnection(**{**settings, **options})

    def logins(self) -> int:
        """How many SSH logins sshd has accepted so far."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count(f"Accepted publickey for {self.user} ")

    def clean_home(self) -> None:
        """Empty the home directory (this host's state), keeping the directory."""
        _empty_dir(self.home)


class SSHBed:
    """Starts ``count`` sshd hosts; use as a context manager or call start() / stop()."""

    def __init__(
        self,
        count: int = 4,
        sudo: Sequence[str] = (),
        behind_jump: bool = False,
        switched: bool = False,
        rate_mbit: float | None = None,
    ):
        if behind_jump and switched:
            raise ValueError("a bed is either behind a jump host or switched, not both")
        if count < (2 if behind_jump else 1):
            raise ValueError("count must be at least 1 (2 behind a jump host)")
        for kind in sudo:
            if kind not in ("none", "nopasswd", "password"):
                raise ValueError(f"unknown sudo kind {kind!r}")
        self.count = count
        self.sudo = tuple(sudo) + ("none",) * (count - len(sudo))
        self.hosts: list[BedHost] = []
        self.base: Path | None = None
        self.client_key: Path | None = None
        self.known_hosts: Path | None = None
        self.slot: int | None = None
        self.started_in: float | None = None  # seconds start() took
        self._slot_lock: int | None = None
        self._sudoers: list[Path] = []
        self._stopped = False
        self.behind_jump = behind_jump
        self.switched = switched
        self.rate_mbit = rate_mbit
        self.netns: str | None = None
        self.namespaces: list[str] = []  # the switched bed's: the switch's, then each host's
        self.workstation_address: str | None = None  # this machine on the switched network
        self._held_ports: list[socket.socket] = []  # ports kept closed on this machine

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> SSHBed:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> SSHBed:
        began = time.monotonic()
        _check_machine()
        atexit.register(self.stop)
        try:
            self._take_slot()
            self.base = Path(tempfile.mkdtemp(prefix=f"toolkit-sshbed{self.slot}-"))
            self.base.chmod(0o755)  # the users must reach their homes inside it
            self.client_key = self.base / "client_ed25519"
            _keygen(self.client_key, "toolkit-sshbed-client")
            self.known_hosts = self.base / "known_hosts"
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
            for index in range(1, self.count + 1):
                self.hosts.append(self._prepare_host(index))
            if self.behind_jump:
                if shutil.which("ip") is None:
                    raise BedUnavailable("ip is missing (apt-get install iproute2)")
                self._make_namespace()
            if self.switched:
                for tool in ("ip", "tc"):
                    if shutil.which(tool) is None:
                        raise BedUnavailable(f"{tool} is missing (apt-get install iproute2)")
                self._make_switch()
            for host in self.hosts:
                self._launch(host)
            for host in self.hosts:
                self._wait_ready(host)
            self.known_hosts.write_text("".join(h.known_hosts_line + "\n" for h in self.hosts))
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for host in self.hosts:
            if host.process is not None:
                _stop_process_tree(host.process)
        for path in self._sudoers:
            path.unlink(missing_ok=True)
        if self.netns is not None:
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
            self.netns = None
        for namespace in reversed(self.namespaces):  # the workstation's veth goes with the switch
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
        self.namespaces = []
        for held in self._held_ports:
            held.close()
        for host in self.hosts:
            _set_password(host.user, None)
            _empty_dir(host.home)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
        if self._slot_lock is not None:
            os.close(self._slot_lock)
            self._slot_lock = None
        atexit.unregister(self.stop)

    # -- inventory -----------------------------------------------------------------------

    def inventory(self) -> dict:
        """An Ansible YAML inventory (as a dict) with every host in group ``bed``."""
        return {
            "all": {
                "children": {"bed": {"hosts": {h.name: h.inventory_vars() for h in self.hosts}}}
            }
        }

    def write_inventory(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.inventory(), sort_keys=False))
        return path

    # -- setup steps ---------------------------------------------------------------------

    def _take_slot(self) -> None:
        """Claim a slot so that concurrent pytest sessions use different OS users."""
        for slot in range(MAX_SLOTS):
            fd = os.open(
                LOCK_DIR / f"toolkit-sshbed-slot{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.slot, self._slot_lock = slot, fd
            return
        raise BedUnavailable(f"all {MAX_SLOTS} sshd bed slots are in use")

    def _prepare_host(self, index: int) -> BedHost:
        assert self.base is not None and self.client_key and self.known_hosts
        user = f"tkhost{index}" if self.slot == 0 else f"tks{self.slot}h{index}"
        host_dir = self.base / f"host{index}"
        host_dir.mkdir()
        home = HOMES / user
        HOMES.mkdir(mode=0o755, parents=True, exist_ok=True)
        _ensure_user(user, home)
        _empty_dir(home)
        entry = pwd.getpwnam(user)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        home.chmod(0o700)
        _keygen(host_dir / "ssh_host_ed25519_key", f"toolkit-sshbed-{user}")
        host_key = " ".join((host_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        authorized = host_dir / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        authorized.chmod(0o644)

        kind = self.sudo[index - 1]
        password = None
        if kind != "none":
            if kind == "password":
                password = "pw-" + secrets.token_urlsafe(12)
                _set_password(user, password)
            rule = "ALL=(ALL:ALL) NOPASSWD: ALL" if kind == "nopasswd" else "ALL=(ALL:ALL) ALL"
            sudoers = SUDOERS_DIR / f"toolkit-sshbed-{user}"
            sudoers.write_text(f"{user} {rule}\n")
            sudoers.chmod(0o440)
            self._sudoers.append(sudoers)
        return BedHost(
            name=user,
            port=0,
            user=user,
            key_file=self.client_key,
            known_hosts=self.known_hosts,
            home=home,
            dir=host_dir,
            host_key=host_key,
            sudo=kind,
            sudo_password=password,
        )

    def _make_namespace(self) -> None:
        """A namespace for every sshd: veth to the jump host, loopback for the others."""
        tag = f"{self.slot}x{secrets.token_hex(3)}"
        self.netns = f"tkbed{tag}"
        outside, inside = f"tko{tag}", f"tki{tag}"
        subnet = f"10.{251 + self.slot % 4}.{secrets.randbelow(254) + 1}"
        for argv in (
            ["ip", "netns", "add", self.netns],
            ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside],
            ["ip", "link", "set", inside, "netns", self.netns],
            ["ip", "addr", "add", f"{subnet}.1/30", "dev", outside],
            ["ip", "link", "set", outside, "up"],
            ["ip", "-n", self.netns, "addr", "add", f"{subnet}.2/30", "dev", inside],
            ["ip", "-n", self.netns, "link", "set", inside, "up"],
            ["ip", "-n", self.netns, "link", "set", "lo", "up"],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                raise BedUnavailable(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        for index, host in enumerate(self.hosts):
            host.netns = self.netns
            host.address = f"{subnet}.2" if index == 0 else "127.0.0.1"
            host.direct = index == 0

    def _make_switch(self) -> None:
        """A namespace per host, each with a veth to a bridge in a switch namespace, and a veth
        from this machine to that bridge; every link rate-limited both ways when asked."""
        tag = f"{self.slot}x{secrets.token_hex(2)}"
        switch = f"tksw{tag}"
        subnet = f"10.{244 + self.slot % 4}.{secrets.randbelow(254) + 1}"
        self.namespaces.append(switch)
        self._ip(["netns", "add", switch])
        self._ip(["-n", switch, "link", "add", "br0", "type", "bridge"])
        self._ip(["-n", switch, "link", "set", "br0", "up"])
        self._ip(["-n", switch, "link", "set", "lo", "up"])
        # the workstation: tkw<tag> here, its peer a port of the bridge
        here, port = f"tkw{tag}", f"tkw{tag}p"
        self._ip(["link", "add", here, "type", "veth", "peer", "name", port])
        self._ip(["link", "set", port, "netns", switch])
        self._ip(["-n", switch, "link", "set", port, "master", "br0", "up"])
        self.workstation_address = f"{subnet}.1"
        self._ip(["addr", "add", f"{subnet}.1/24", "dev", here])
        self._ip(["link", "set", here, "up"])
        self._limit(None, here)
        self._limit(switch, port)
        for index, host in enumerate(self.hosts, start=1):
            namespace = f"tkh{tag}n{index}"
            self.namespaces.append(namespace)
            inside, port = f"tkh{tag}e{index}", f"tkh{tag}p{index}"
            self._ip(["netns", "add", namespace])
            self._ip(["-n", namespace, "link", "set", "lo", "up"])
            self._ip(["-n", switch, "link", "add", port, "type", "veth", "peer", "name", inside])
            self._ip(["-n", switch, "link", "set", inside, "netns", namespace])
            self._ip(["-n", switch, "link", "set", port, "master", "br0", "up"])
            host.address = f"{subnet}.{9 + index}"
            self._ip(["-n", namespace, "addr", "add", f"{host.address}/24", "dev", inside])
            self._ip(["-n", namespace, "link", "set", inside, "up"])
            self._limit(namespace, inside)  # the host's upload
            self._limit(switch, port)  # its download
            host.netns = namespace
            host.direct = True

    @staticmethod
    def _ip(argv: list[str], program: str = "ip") -> None:
        proc = subprocess.run([program, *argv], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BedUnavailable(f"{program} {' '.join(argv)} failed: {proc.stderr.strip()}")

    def _limit(self, namespace: str | None, device: str) -> None:
        """``rate_mbit`` out of ``device`` (tbf: a burst of 10 ms, at least 128 KiB, so that
        the veth's 64 KiB segments pass)."""
        if not self.rate_mbit:
            return
        burst = max(int(self.rate_mbit * 1e6 / 8 / 100), 128 * 1024)
        where = ["-n", namespace] if namespace else []
        self._ip([*where, "qdisc", "add", "dev", device, "root", "tbf",
                  "rate", f"{self.rate_mbit}mbit", "burst", str(burst), "latency", "50ms"],
                 program="tc")  # fmt: skip

    def _launch(self, host: BedHost) -> None:
        if self.switched:  # alone in its namespace: any port is free there
            host.port = 22
        elif host.direct:
            host.port = _free_port()
        else:  # inside the namespace; hold the same port closed on this machine's loopback
            held = socket.socket()
            held.bind(("127.0.0.1", 0))
            self._held_ports.append(held)
            host.port = held.getsockname()[1]
        config = host.dir / "sshd_config"
        config.write_text(_sshd_config(host))
        host.log.unlink(missing_ok=True)
        prefix = ["ip", "netns", "exec", host.netns] if host.netns else []
        host.process = subprocess.Popen(
            [*prefix, str(SSHD), "-D", "-f", str(config), "-E", str(host.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_ready(self, host: BedHost) -> None:
        """Wait until this sshd (not another process) listens and answers; retry on port races."""
        for _attempt in range(START_ATTEMPTS):
            assert host.process is not None
            if _await_listening(host):
                return
            _stop_process_tree(host.process)
            log = host.log.read_text(errors="replace") if host.log.exists() else ""
            if "Address already in use" not in log and "Cannot bind" not in log:
                raise RuntimeError(f"sshd for {host.name} did not start:\n{log[-2000:]}")
            self._launch(host)
        raise RuntimeError(f"sshd for {host.name}: no free port after {START_ATTEMPTS} tries")


# ---------------------------------------------------------------------------------------------
# pytest fixtures: one bed per session, shared by every module that imports them


_shared: SSHBed | None = None
_shared_users = 0
_shared_lock = threading.Lock()


def _acquire_shared() -> SSHBed:
    global _shared, _shared_users
    with _shared_lock:
        if _shared is None:
            try:
                _shared = SSHBed(count=len(SHARED_SUDO), sudo=SHARED_SUDO).start()
            except BedUnavailable as exc:
                if os.environ.get("TOOLKIT_SKIP_SSHBED") == "1":
                    pytest.skip(f"sshd test bed unavailable: {exc}")
                pytest.fail(f"sshd test bed unavailable: {exc} (TOOLKIT_SKIP_SSHBED=1 skips)")
        _shared_users += 1
        return _shared


def _release_shared() -> None:
    global _shared, _shared_users
    with _shared_lock:
        _shared_users -= 1
        if _shared_users == 0 and _shared is not None:
            _shared.stop()
            _shared = None


@pytest.fixture(scope="session")
def ssh_bed() -> Iterator[SSHBed]:
    """The session's shared bed: hosts with sudo as in SHARED_SUDO."""
    bed = _acquire_shared()
    try:
        yield bed
    finally:
        _release_shared()


@pytest.fixture(scope="session")
def ssh_hosts() -> Iterator[list[BedHost]]:
    """The shared bed's hosts (see SHARED_SUDO for which may sudo)."""
    bed = _acquire_shared()
    try:
        yield bed.hosts
    finally:
        _release_shared()


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_machine() -> None:
    if os.geteuid() != 0:
        raise BedUnavailable("it must run as root (sshd and useradd)")
    if not SSHD.exists():
        raise BedUnavailable(f"{SSHD} is missing (apt-get install openssh-server)")
    for tool in (SSH_KEYGEN, "useradd", "usermod", "chpasswd", "sudo"):
        if shutil.which(tool) is None:
            raise BedUnavailable(f"{tool} is missing (apt-get install openssh-server sudo)")


def _sshd_config(host: BedHost) -> str:
    return f"""\
ListenAddress {host.address}
Port {host.port}
HostKey {host.dir}/ssh_host_ed25519_key
PidFile {host.dir}/sshd.pid
AuthorizedKeysFile {host.dir}/authorized_keys
AllowUsers {host.user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
LogLevel INFO
Subsystem sftp internal-sftp
"""


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _run_admin(argv: list[str], input: str | None = None) -> None:
    """useradd & co., retried a few times: they refuse while another one holds /etc/passwd."""
    for attempt in range(5):
        proc = subprocess.run(argv, input=input, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        if "lock" not in proc.stderr.lower() or attempt == 4:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        time.sleep(0.2 * (attempt + 1))


def _ensure_user(user: str, home: Path) -> None:
    """Create ``user`` with ``home`` (or fix an existing one); no password (pubkey only)."""
    home.mkdir(mode=0o700, exist_ok=True)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        _run_admin(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
                    "--user-group", "--password", "*", user])  # fmt: skip
        return
    if entry.pw_dir != str(home) or entry.pw_shell != "/bin/sh":
        _run_admin(["usermod", "--home", str(home), "--shell", "/bin/sh", user])
    _set_password(user, None)


def _set_password(user: str, password: str | None) -> None:
    """Set a password, or None for "no password" ('*': no password login, not locked)."""
    if password is None:
        _run_admin(["chpasswd", "--encrypted"], input=f"{user}:*\n")
    else:
        _run_admin(["chpasswd"], input=f"{user}:{password}\n")


def _empty_dir(directory: Path) -> None:
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _await_listening(host: BedHost) -> bool:
    """True once our sshd logged that it listens and the port answers with an SSH banner.

    False if the process exited first. Polls with backoff, up to READY_TIMEOUT seconds.
    """
    assert host.process is not None
    deadline = time.monotonic() + READY_TIMEOUT
    delay = 0.005
    marker = f"Server listening on {host.address} port {host.port}"
    while time.monotonic() < deadline:
        if host.process.poll() is not None:
            return False
        if host.log.exists() and marker in host.log.read_text(errors="replace"):
            if not host.direct:
                return True  # listening inside the namespace, where this machine cannot look
            try:
                with socket.create_connection((host.address, host.port), timeout=2) as sock:
                    if sock.recv(64).startswith(b"SSH-2.0-"):
                        return True
            except OSError:
                pass
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise RuntimeError(f"sshd for {host.name} did not listen within {READY_TIMEOUT:.0f}s")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def _stop_process_tree(process: subprocess.Popen) -> None:
    """SIGTERM sshd and its session processes by pid; SIGKILL what is left after a while."""
    if process.poll() is not None:
        return
    below = _descendants(process.pid)
    process.terminate()
    for pid in below:
        _signal(pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)
    deadline = time.monotonic() + STOP_TIMEOUT
    while below and time.monotonic() < deadline:
        below = [pid for pid in below if _alive(pid)]
        if below:
            time.sleep(0.05)
    for pid in below:
        _signal(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
