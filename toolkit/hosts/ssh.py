"""SSHConnection: one SSH connection per host for the whole run, with paramiko.

The connection opens on first use and every run(), put() and get() shares it: each run() is one
exec channel (one round trip), files move over one SFTP session. Host keys are checked against a
known_hosts file; a connection that cannot be made raises HostUnreachable with a one-line reason.

Privileged commands go through sudo. Without a password: ``sudo -n``. With one, sudo reads it
from stdin (``sudo -S``) behind a random prompt, and the command first prints a random marker:
the password is sent only when sudo prints that prompt, and the caller's stdin only after the
marker, so the password never reaches the command even when sudo needs none.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import posixpath
import re
import secrets
import select
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import fabric
import paramiko

from toolkit.hosts import sshconfig
from toolkit.hosts.connection import Connection, HostUnreachable, Result, quote

HOST_KEY_POLICIES = ("strict", "accept-new")
TIMEOUT_RC = 124  # rc of a run() that outlived its timeout, as timeout(1) reports it
SIGNALLED_RC = 255  # rc of a command that ended without an exit status (killed), as ssh(1) says
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHUNK = 32768
MAX_JUMPS = 8  # jump hosts on the way to one host
# AES-GCM first: paramiko's own first choice (aes128-ctr with hmac-sha2-256) moves half as many
# bytes per second; OpenSSH servers offer GCM since 6.2. Measured in bench/transfer.py.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
SFTP_WINDOW = 16 << 20  # receive window of the SFTP channel (get)
SFTP_REQUEST = 255 * 1024  # write requests to OpenSSH's sftp-server (it takes 256 KiB messages)
_READ_BLOCK = 1 << 20
_known_hosts_lock = threading.Lock()  # accept-new appends from many host threads
DEBUG_ENV = "TOOLKIT_SSH_DEBUG"  # set: paramiko's own log reaches the logging handlers

# paramiko logs a failed connection from its transport thread, with a traceback, which Python
# prints on stderr when nothing handles it. Every failure is reported here in one line instead.
if not os.environ.get(DEBUG_ENV):
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False


class HostKeyRejected(HostUnreachable):
    """The host's key is not in known_hosts (strict policy) or differs from the known one."""


def parse_host_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[ssh://][user@]host[:port]`` (``[v6addr]:port`` too) -> (user, host, port)."""
    text = spec.strip().removeprefix("ssh://")
    user, at, rest = text.rpartition("@")
    if not at:
        user, rest = "", text
    port: int | None = None
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", rest) or re.fullmatch(
        r"([^:]+)(?::(\d+))?", rest
    )
    if match:
        rest = match.group(1)
        port = int(match.group(2)) if match.group(2) else None
    if not rest or (port is not None and not 0 < port < 65536):
        raise ValueError(f'"{spec}" is not a [user@]host[:port] host')
    return user or None, rest, port


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """What to do with a host whose key type is not in known_hosts at all."""

    def __init__(self, policy: str, known_hosts: Path, label: str):
        self.policy = policy
        self.known_hosts = known_hosts
        self.label = label

    def missing_host_key(self, client, hostname, key) -> None:
        if self.policy != "accept-new":
            raise HostKeyRejected(
                f"{self.label}: host key of {hostname} is unknown (not in {self.known_hosts}); "
                f"check it and add it (ssh-keyscan), or use host key policy accept-new"
            )
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _known_hosts_lock:
            self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


class SSHConnection(Connection):
    """A host reached over SSH, as ``ssh`` would reach it. Opened lazily; one connection for all.

    ``address`` is what Ansible gives ssh (``ansible_host``, else the inventory name): it is the
    name looked up in ssh_config. ``port``, ``user``, ``key_file`` and ``jump`` (the inventory's
    values) override ssh_config; ``ssh_options`` (``-o`` options as (name, value), from the ssh
    arguments) come next, then ssh_config (``ssh_config``: a file, "none", or None for the
    default files; see toolkit.hosts.sshconfig), then the defaults.
    """

    def __init__(
        self,
        name: str,
        address: str,
        port: int | None = None,
        user: str | None = None,
        key_file: str | Path | None = None,
        jump: str | None = None,
        become: bool = False,
        become_password: str | None = None,
        host_key_policy: str = "strict",
        known_hosts: str | Path | None = None,
        connect_timeout: float = 10.0,
        ssh_options: Sequence[tuple[str, str]] = (),
        ssh_config: str | None = None,
    ):
        if host_key_policy not in HOST_KEY_POLICIES:
            raise ValueError(f"host_key_policy must be one of {', '.join(HOST_KEY_POLICIES)}")
        self.name = name
        self.alias = address
        self.address = address
        self.port = int(port) if port else 22
        self.user = user or getpass.getuser()
        self.key_file = Path(key_file).expanduser() if key_file else None
        self.jump = jump
        self.proxy_command: str | None = None
        self.become_default = become
        self._become_password = become_password
        self.host_key_policy = host_key_policy
        self.known_hosts = Path(known_hosts or "~/.ssh/known_hosts").expanduser()
        self.connect_timeout = connect_timeout
        self.round_trips = 0
        self._lock = threading.Lock()  # opening, closing, counting
        self._sftp_lock = threading.Lock()
        self._fabric: fabric.Connection | None = None
        self._hops: list[fabric.Connection] = []  # jump hosts, the first one first
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None
        self._config_error: str | None = None
        self._keys_named: dict[int, list[Path]] = {}
        first: list[tuple[str, str]] = []
        if port:
            first.append(("Port", str(port)))
        if user:
            first.append(("User", user))
        if key_file:
            first.append(("IdentityFile", str(self.key_file)))
        if jump:
            first.append(("ProxyJump", jump))
        first.extend(ssh_options)
        try:
            self._config = sshconfig.build(address, first, sshconfig.config_files(ssh_config))
            self._resolve(known_hosts)
        except sshconfig.SSHConfigError as exc:
            self._config_error = f"{name}: {exc}"

    def _resolve(self, known_hosts: str | Path | None) -> None:
        """Settle address, port, user, jump hosts, timeouts and host keys from the config."""
        options = sshconfig.lookup(self._config, self.alias)
        self.address = options.get("hostname", self.alias)
        self.port = _number(options, "port", 22)
        self.user = options.get("user") or self.user
        self.connect_timeout = _number(options, "connecttimeout", self.connect_timeout)
        if "proxyjump" in options and options["proxyjump"].lower() != "none":
            self.jump = options["proxyjump"]
        self.proxy_command = options.get("proxycommand")
        if self.proxy_command and self.proxy_command.lower() == "none":
            self.proxy_command = None
        if known_hosts is None and options.get("userknownhostsfile"):
            self.known_hosts = Path(options["userknownhostsfile"].split()[0]).expanduser()
        checking = options.get("stricthostkeychecking", "").lower()
        if self.host_key_policy == "strict" and checking in ("accept-new", "no", "off"):
            self.host_key_policy = "accept-new"  # a changed key is refused all the same

    def refuse(self, reason: str) -> None:
        """Make every use fail with ``reason`` (a setting that cannot be used)."""
        self._config_error = f"{self.name}: {reason}"

    def __repr__(self) -> str:
        via = f" via {self.jump}" if self.jump else ""
        return f"<SSHConnection {self.name} {self.user}@{self.address}:{self.port}{via}>"

    # -- commands ------------------------------------------------------------------------

    def run(
        self,
        script: str,
        *,
        stdin: bytes | None = None,
        become: bool = False,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
    ) -> Result:
        """Run ``script`` with /bin/sh on the host; never raises for a non-zero exit.

        ``on_stdout`` receives stdout as it arrives. A run that outlives ``timeout`` seconds is abandoned and returns rc 124.
        """
        script = _with_env(script, env or {})
        sudo = (become or self.become_default) and self.user != "root"
        command = _Command(script, sudo, self._become_password if sudo else None, timeout)

        client = self._connected()
        with self._lock:
            self.round_trips += 1
        try:
            channel = client.get_transport().open_session(timeout=self.connect_timeout)
            channel.exec_command(command.line)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(f"{self._label()}: cannot start a command: {exc}") from None
        exchange = _Exchange(channel, stdin or b"", command, on_stdout)
        try:
            result = exchange.run(timeout, self._label())
        finally:
            channel.close()
        if exchange.timed_out and exchange.remote_pid:
            # End what the command started: its login shell leads its own process group.
            self.run(f"kill -TERM -{exchange.remote_pid} 2>/dev/null; true", become=sudo)
        return result

    # -- files ---------------------------------------------------------------------------

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy ``local`` to ``remote``: upload beside it under a temporary name, then rename.

        On a become host (``become`` and not logged in as root) the file belongs to root: it is
        uploaded into the login user's home first, then moved into place through sudo.
        """
        if self.become_default and self.user != "root":
            self._put_as_root(local, remote, mode)
            return
        with self._sftp_lock:
            sftp = self._sftp_client()
            path = self._expand(remote)
            parent, name = posixpath.split(path)
            self._makedirs(sftp, parent or ".")
            tmp = posixpath.join(parent, f".{name}.toolkit-{secrets.token_hex(6)}.tmp")
            with self._removed_on_failure(sftp, tmp, remote):
                self._upload(sftp, local, tmp)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, path)

    def put_in_place(
        self,
        local: Path,
        remote: str,
        mode: int = 0o644,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> None:
        """Copy ``local`` straight to ``remote`` (no temporary name: the file grows where it
        is, so a reader on the host can follow it), reporting bytes sent to ``progress``.
        For callers that own the atomicity (place_blob writes ``<dest>.partial`` and renames
        it after hashing); ``remote`` is removed first, and again when the upload fails. On a
        become host this is ``put`` (the file must be root's)."""
        if self.become_default and self.user != "root":
            self.put(local, remote, mode)
            return
        with self._sftp_lock:
            sftp = self._sftp_client()
            path = self._expand(remote)
            self._makedirs(sftp, posixpath.dirname(path) or ".")
            with contextlib.suppress(OSError):
                sftp.remove(path)  # a new file, so that a relay reading an old one notices
            with self._removed_on_failure(sftp, path, remote):
                self._upload(sftp, local, path, progress)
                sftp.chmod(path, mode)

    @contextlib.contextmanager
    def _removed_on_failure(self, sftp: paramiko.SFTPClient, path: str, remote: str):
        """Remove ``path`` when the upload into it fails; an OSError names the host and file."""
        try:
            yield
        except BaseException as exc:
            with contextlib.suppress(OSError, paramiko.SSHException):
                sftp.remove(path)
            if isinstance(exc, OSError):
                raise OSError(exc.errno, f"{self.name}: cannot put {remote}: {exc}") from exc
            raise

    def _upload(
        self,
        sftp: paramiko.SFTPClient,
        local: Path,
        path: str,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> None:
        """Write ``local`` to ``path`` in pipelined write requests, then check the size.

        To OpenSSH's sftp-server in 255 KiB requests (paramiko sends 32 KiB ones, whose
        bookkeeping costs more than the bytes); to other servers in paramiko's size.
        """
        size = Path(local).stat().st_size
        openssh = "openssh" in (sftp.get_channel().get_transport().remote_version or "").lower()
        with open(local, "rb") as source, sftp.open(path, "wb") as target:
            target.MAX_REQUEST_SIZE = SFTP_REQUEST if openssh else target.MAX_REQUEST_SIZE
            target.set_pipelined(True)
            sent = 0
            while block := source.read(_READ_BLOCK):
                target.write(block)
                sent += len(block)
                if progress is not None:
                    progress(sent, size)
        landed = sftp.stat(path).st_size
        if landed != size:
            raise OSError(f"{path} has {landed} bytes after the upload, not {size}")

    def _put_as_root(self, local: Path, remote: str, mode: int) -> None:
        with self._sftp_lock:
            sftp = self._sftp_client()
            staged = posixpath.join(self._home_dir(), f".toolkit-upload-{secrets.token_hex(8)}")
            try:
                self._upload(sftp, local, staged)
            except OSError as exc:
                with contextlib.suppress(OSError, paramiko.SSHException):
                    sftp.remove(staged)
                raise OSError(exc.errno, f"{self.name}: cannot upload {remote}: {exc}") from exc
        # As root: `~` is root's home; copy beside the target, then rename (atomic).
        target = '"$HOME"' + quote(remote[1:]) if remote.startswith("~/") else quote(remote)
        result = self.run(
            f'tk_dest={target}; tk_tmp="$tk_dest.toolkit-$$.tmp"; '
            f'mkdir -p "$(dirname "$tk_dest")" && cp {quote(staged)} "$tk_tmp" && '
            f'chmod {mode:o} "$tk_tmp" && mv -f "$tk_tmp" "$tk_dest"; tk_rc=$?; '
            f'rm -f {quote(staged)} "$tk_tmp"; exit $tk_rc',
            become=True,
        )
        if not result.ok:
            raise OSError(
                f"{self.name}: cannot put {remote} as root: {result.stderr.strip()[-300:]}"
            )

    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` to ``local`` (written under a temporary name, then renamed)."""
        local = Path(local)
        with self._sftp_lock:
            sftp = self._sftp_client()
            path = self._expand(remote)
            fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.")
            os.close(fd)
            try:
                sftp.get(path, tmp)
                os.replace(tmp, local)
            except BaseException as exc:
                Path(tmp).unlink(missing_ok=True)
                if isinstance(exc, OSError):
                    raise OSError(exc.errno, f"{self.name}: cannot get {remote}: {exc}") from exc
                raise

    def _expand(self, remote: str) -> str:
        """``~`` and ``~/x`` -> the remote home; other paths unchanged."""
        if remote == "~" or remote.startswith("~/"):
            return self._home_dir() + remote[1:]
        return remote

    def _home_dir(self) -> str:
        if self._home is None:
            self._home = self._sftp_client().normalize(".")
        return self._home

    @staticmethod
    def _makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
        missing = []
        current = directory
        while current not in ("", "/", "."):
            try:
                if not stat.S_ISDIR(sftp.stat(current).st_mode or 0):
                    raise NotADirectoryError(f"{current} is not a directory")
                break
            except FileNotFoundError:
                missing.append(current)
                current = posixpath.dirname(current)
        for path in reversed(missing):
            try:
                sftp.mkdir(path, 0o755)
            except OSError:
                if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):  # lost a race: fine if dir
                    raise

    # -- the connection ------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._close_clients()

    def _close_clients(self) -> None:
        clients = [self._fabric.client] if self._fabric is not None else []
        clients += [hop.client for hop in reversed(self._hops)]
        for closable in (self._sftp, *clients):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()
        self._sftp = self._fabric = None
        self._hops = []
        self._keys_named = {}
        self._home = None

    def _sftp_client(self) -> paramiko.SFTPClient:
        client = self._connected()
        with self._lock:
            if self._sftp is None:
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(
                        client.get_transport(), window_size=SFTP_WINDOW
                    )
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    raise HostUnreachable(f"{self._label()}: cannot start SFTP: {exc}") from None
            return self._sftp

    def _connected(self) -> paramiko.SSHClient:
        """The open connection; opened now if it is not (or is no longer) open."""
        with self._lock:
            if self._fabric is not None and self._fabric.is_connected:
                return self._fabric.client
            self._close_clients()
            if self._config_error:
                raise HostUnreachable(self._config_error)
            try:
                gateway = self._jump_chain(self.jump, (self.alias,)) if self.jump else None
            except sshconfig.SSHConfigError as exc:
                raise HostUnreachable(f"{self.name}: {exc}") from None
            target = fabric.Connection(
                self.alias,
                config=self._fabric_config(),
                gateway=gateway or self.proxy_command or False,
                connect_kwargs={},
            )
            # Open the chain hop by hop here, so that each failure names the host it happened on.
            chain = []
            gateway = target.gateway
            while isinstance(gateway, fabric.Connection):
                chain.insert(0, gateway)
                gateway = gateway.gateway
            proxy_command = gateway if isinstance(gateway, str) else None
            self._hops, self._fabric = chain, target
            try:
                self._open_chain([*chain, target], proxy_command)
            except BaseException:
                self._close_clients()
                raise
            target.client.get_transport().set_keepalive(30)
            return target.client

    def _jump_chain(self, jump: str, seen: tuple[str, ...]) -> fabric.Connection | None:
        """The last of the ProxyJump hops ``a,b,c``, each with its gateway set to the one before.

        Built here rather than by fabric, which drops a jump host at the target's address
        (another port of the same machine) and recurses without end on ``Host *`` + ProxyJump.
        The first hop is reached as its own ssh_config entry says; a ProxyJump naming a host
        already on the way is ignored.
        """
        if len(seen) > MAX_JUMPS:
            raise sshconfig.SSHConfigError(f"more than {MAX_JUMPS} jump hosts: {' > '.join(seen)}")
        gateway = None
        for spec in (part.strip() for part in jump.split(",")):
            if not spec:
                continue
            hop = fabric.Connection(spec, config=self._fabric_config(), gateway=False)
            if gateway is None:
                own = hop.ssh_config.get("proxyjump") or "none"
                via = fabric.connection.derive_shorthand(own.split(",")[0].strip())["host"]
                if own.lower() != "none" and via not in (*seen, hop.original_host):
                    hop.gateway = self._jump_chain(own, (*seen, hop.original_host))
                elif hop.ssh_config.get("proxycommand"):
                    hop.gateway = hop.ssh_config["proxycommand"]
            else:
                hop.gateway = gateway
            gateway = hop
        return gateway

    def _fabric_config(self) -> fabric.Config:
        # lazy: no fabric.yaml files are read; every setting comes from ssh_config and the inventory
        return fabric.Config(ssh_config=self._config, lazy=True)

    def _open_chain(self, chain: list[fabric.Connection], proxy_command: str | None) -> None:
        previous: fabric.Connection | None = None
        for conn in chain:
            is_target = conn is chain[-1]
            label = self._label() if is_target else f"{self.name}: jump host {_describe(conn)}"
            self._prepare(conn, label)
            conn.gateway = None  # opened here, below
            try:
                if previous is not None:
                    sock = previous.transport.open_channel(
                        "direct-tcpip", (conn.host, conn.port), ("", 0),
                        timeout=self.connect_timeout,
                    )  # fmt: skip
                elif proxy_command:
                    sock = paramiko.ProxyCommand(proxy_command)
                else:
                    sock = socket.create_connection(
                        (conn.host, conn.port), timeout=self.connect_timeout
                    )
            except Exception as exc:
                if previous is None:
                    how = f"proxy command `{proxy_command}`: " if proxy_command else ""
                    raise HostUnreachable(
                        f"{label}: {how}{_reason(exc, self.connect_timeout)}"
                    ) from None
                raise HostUnreachable(
                    f"{self.name}: jump host {_describe(previous)} cannot reach "
                    f"{conn.host}:{conn.port}: {_reason(exc, self.connect_timeout)}"
                ) from None
            conn.connect_kwargs["sock"] = sock
            self._login(conn, label)
            previous = conn

    def _prepare(self, conn: fabric.Connection, label: str) -> None:
        """Host keys, keys and timeouts of one hop (fabric's default is to accept any key)."""
        client = conn.client
        if self.known_hosts.is_file():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(
            _KnownHostsPolicy(self.host_key_policy, self.known_hosts, label)
        )
        keys = [Path(k).expanduser() for k in conn.connect_kwargs.get("key_filename") or []]
        if not keys and self.key_file is not None:
            keys = [self.key_file]  # a jump host with no key of its own: the inventory's key
        if self.key_file is not None and self.key_file in keys and not self.key_file.is_file():
            raise HostUnreachable(f"{label}: key file {self.key_file} does not exist")
        present = list(dict.fromkeys(str(k) for k in keys if k.is_file()))
        conn.connect_timeout = None  # the timeouts are ours, below
        conn.connect_kwargs.update(
            transport_factory=_transport,
            key_filename=present or None,
            look_for_keys=not keys,
            allow_agent=conn.ssh_config.get("identitiesonly", "").lower() != "yes",
            timeout=2 * self.connect_timeout,
            banner_timeout=self.connect_timeout,
            auth_timeout=self.connect_timeout,
            channel_timeout=self.connect_timeout,
        )
        self._keys_named[id(conn)] = keys  # for the message, should authentication fail

    def _login(self, conn: fabric.Connection, label: str) -> None:
        try:
            conn.open()
        except HostKeyRejected:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyRejected(
                f"{label}: host key has CHANGED since it was recorded in {self.known_hosts} "
                f"(now {exc.key.get_name()} {exc.key.fingerprint}); refusing to connect"
            ) from None
        except Exception as exc:
            # A failure in paramiko's transport thread (e.g. no banner) surfaces later as a
            # vaguer error; report the original one.
            transport = conn.client.get_transport()
            cause = getattr(transport, "saved_exception", None) or exc
            reason = _reason(cause, self.connect_timeout)
            if "no authentication methods" in str(cause).lower():
                reason = "authentication failed (no key to offer)"
            if reason.startswith("authentication failed"):
                reason += _keys_tried(self._keys_named.get(id(conn), []))
            raise HostUnreachable(f"{label}: {reason}") from None

    def _label(self) -> str:
        return f"{self.name} ({self.user}@{self.address}:{self.port})"


def _number(options: dict, name: str, default):
    """An ssh option that must be a number, as the type of ``default``."""
    if name not in options:
        return default
    try:
        return type(default)(options[name])
    except ValueError:
        raise sshconfig.SSHConfigError(
            f'ssh option {name}: "{options[name]}" is not a number'
        ) from None


def _transport(sock, **kwargs) -> paramiko.Transport:
    """A paramiko Transport that asks for PREFERRED_CIPHERS first."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    first = tuple(c for c in PREFERRED_CIPHERS if c in offered)
    options.ciphers = first + tuple(c for c in offered if c not in first)
    return transport


def _describe(conn: fabric.Connection) -> str:
    name = conn.original_host
    where = f"{conn.user}@{conn.host}:{conn.port}"
    return f"{name} ({where})" if name != conn.host else where


def _keys_tried(keys: list[Path]) -> str:
    if not keys:
        return "; tried the agent and the default keys in ~/.ssh"
    described = [f"{k}" if k.is_file() else f"{k} (does not exist)" for k in keys]
    return f"; tried IdentityFile {', '.join(described)}"


def _reason(exc: Exception, timeout: float) -> str:
    """One line saying why a connection failed."""
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication failed ({exc})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is sshd running on that port?)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
        return f"no SSH banner within {timeout:g}s (not an SSH server?)"
    if isinstance(exc, paramiko.SSHException) and "no existing session" in str(exc).lower():
        return f"SSH handshake did not finish within {2 * timeout:g}s"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _with_env(script: str, env: dict[str, str]) -> str:
    for key in env:
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"invalid environment variable name {key!r}")
    return "".join(f"export {key}={quote(value)}\n" for key, value in env.items()) + script


class _Command:
    """The command line for one run(), and the random markers it prints on stderr.

    - plain:            /bin/sh -c SCRIPT
    - sudo, no password: sudo -n -- /bin/sh -c SCRIPT
    - sudo, password:   sudo -S -p PROMPT -- /bin/sh -c 'printf READY >&2; exec /bin/sh -c "$1"'
                        sh SCRIPT  (the password is sent on PROMPT, stdin only after READY)
    - with a timeout, the login shell first prints its pid (PID_MARK<pid>), which leads the
      command's process group, so that a command that overstays can be ended.
    """

    def __init__(self, script: str, sudo: bool, password: str | None, timeout: float | None):
        self.password = password
        self.prompt = f"toolkit-sudo-{secrets.token_hex(8)}:"
        self.ready = f"toolkit-ready-{secrets.token_hex(8)}"
        self.pid_mark = f"toolkit-pid-{secrets.token_hex(8)}:" if timeout is not None else None
        if not sudo:
            line = f"/bin/sh -c {quote(script)}"
        elif password is None:
            line = f"sudo -n -- /bin/sh -c {quote(script)}"
        else:
            announce = f'printf "%s\\n" {self.ready} >&2; exec /bin/sh -c "$1"'
            line = (
                f"sudo -S -p {quote(self.prompt)} -- "
                f"/bin/sh -c {quote(announce)} sh {quote(script)}"
            )
        if self.pid_mark:
            line = f'printf "%s%s\\n" {self.pid_mark} "$$" >&2; {line}'
        self.line = line


class _Exchange:
    """Feeds stdin to one exec channel and collects its output, answering sudo's prompt."""

    def __init__(
        self,
        channel: paramiko.Channel,
        stdin: bytes,
        command: _Command,
        on_stdout: Callable[[bytes], None] | None = None,
    ):
        self.channel = channel
        self.on_stdout = on_stdout
        self.pending = memoryview(stdin)
        self.password = command.password
        self.prompt = command.prompt.encode()
        self.ready = command.ready.encode()
        self.pid_pattern = (
            re.compile(re.escape(command.pid_mark.encode()) + rb"(\d+)\n")
            if command.pid_mark
            else None
        )
        self.remote_pid: int | None = None
        self.timed_out = False
        self.waiting_for_sudo = command.password is not None
        self.password_sent = False
        self.stdout = bytearray()
        self.stderr = bytearray()

    def run(self, timeout: float | None, label: str) -> Result:
        channel = self.channel
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.waiting_for_sudo and not self.pending:
            channel.shutdown_write()
        while True:
            while channel.recv_ready():
                chunk = channel.recv(_CHUNK)
                self.stdout += chunk
                if self.on_stdout and chunk:
                    self.on_stdout(chunk)
            while channel.recv_stderr_ready():
                self.stderr += channel.recv_stderr(_CHUNK)
            if self.pid_pattern and self.remote_pid is None:
                self._find_pid()
            if self.waiting_for_sudo:
                self._answer_sudo()
            elif self.pending:
                self._send_some()
            if (channel.eof_received or channel.closed) and not (
                channel.recv_ready() or channel.recv_stderr_ready()
            ):
                break
            wait = 1.0
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    self.timed_out = True
                    return self._result(TIMEOUT_RC, f"\ntoolkit: timed out after {timeout:g}s\n")
            if self.pending and not self.waiting_for_sudo:
                wait = min(wait, 0.01)  # the send window may reopen without anything to read
            select.select([channel], [], [], min(wait, 1.0))
        channel.status_event.wait(timeout=30)
        if channel.exit_status >= 0:
            return self._result(channel.exit_status)
        if not channel.get_transport().is_active():
            raise HostUnreachable(f"{label}: connection lost while a command ran")
        # sshd reports a command killed by a signal with exit-signal, which paramiko ignores
        return self._result(SIGNALLED_RC, "\ntoolkit: the command ended without an exit status\n")

    def _find_pid(self) -> None:
        assert self.pid_pattern is not None
        match = self.pid_pattern.search(self.stderr)
        if match:
            self.remote_pid = int(match.group(1))
            del self.stderr[match.start() : match.end()]

    def _answer_sudo(self) -> None:
        if self.ready in self.stderr:
            # Everything before the marker is sudo's own (prompt, lecture): not the command's.
            end = self.stderr.index(self.ready) + len(self.ready)
            if self.stderr[end : end + 1] == b"\n":
                end += 1
            del self.stderr[:end]
            self.waiting_for_sudo = False
            if not self.pending:
                self.channel.shutdown_write()
        elif self.prompt in self.stderr:
            if self.password_sent:  # asked again: the password is wrong; let sudo give up
                self.channel.shutdown_write()
                self.waiting_for_sudo = False
                self.pending = memoryview(b"")
            else:
                assert self.password is not None
                self.channel.sendall((self.password + "\n").encode())
                self.password_sent = True
                del self.stderr[: self.stderr.index(self.prompt) + len(self.prompt)]

    def _send_some(self) -> None:
        if not self.channel.send_ready():
            return
        try:
            sent = self.channel.send(self.pending[:_CHUNK])
        except OSError:  # the command exited without reading all of stdin
            sent = len(self.pending)
        self.pending = self.pending[sent:]
        if not self.pending:
            with contextlib.suppress(OSError):
                self.channel.shutdown_write()

    def _result(self, rc: int, note: str = "") -> Result:
        stderr = self.stderr.replace(self.prompt, b"").decode(errors="replace") + note
        return Result(rc, self.stdout.decode(errors="replace"), stderr)
