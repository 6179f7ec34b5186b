"""Connections: how toolkit runs shell and moves files on a host.

Every step on a host goes through one Connection, opened once per host for the whole run.
Commands are POSIX shell scripts run by ``/bin/sh``; nothing on the target needs Python for
toolkit to read its state.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError


class HostUnreachable(ToolkitError):
    """The host cannot be reached or refused us (auth, host key, network)."""


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class CommandFailed(Exception):
    def __init__(self, what: str, result: Result):
        self.what = what
        self.result = result
        tail = (result.stderr or result.stdout).strip().splitlines()[-8:]
        super().__init__(f"{what} failed (exit {result.rc}): " + " | ".join(tail))


class Connection:
    """What every connection offers. ``name`` is the inventory name of the host."""

    name: str
    round_trips: int = 0  # counted by run(); the fleet benchmark reports it

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

        ``on_stdout`` receives stdout as it arrives (in chunks of any size: split lines
        yourself); the Result holds all of it too.
        """
        raise NotImplementedError

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy a local file to ``remote`` atomically (temp file in the same dir, then rename)."""
        raise NotImplementedError

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        try:
            self.put(Path(tmp.name), remote, mode)
        finally:
            os.unlink(tmp.name)

    def get(self, remote: str, local: Path) -> None:
        raise NotImplementedError

    def check(self, script: str, what: str, **kwargs) -> Result:
        """Like run(), but raise CommandFailed on a non-zero exit."""
        result = self.run(script, **kwargs)
        if not result.ok:
            raise CommandFailed(what, result)
        return result

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalConnection(Connection):
    """The machine toolkit runs on."""

    def __init__(self, name: str = "localhost", become: bool = False):
        self.name = name
        self.become_default = become
        self.round_trips = 0

    def run(
        self, script, *, stdin=None, become=False, timeout=None, env=None, on_stdout=None
    ) -> Result:
        self.round_trips += 1
        argv = ["/bin/sh", "-c", script]
        if (become or self.become_default) and os.geteuid() != 0:
            argv = ["sudo", "-n", "--"] + argv
        full_env = None
        if env:
            full_env = {**os.environ, **env}
        if on_stdout is None:
            proc = subprocess.run(
                argv, input=stdin, capture_output=True, timeout=timeout, env=full_env
            )
            stdout, stderr = proc.stdout, proc.stderr
        else:
            proc, stdout, stderr = _run_streaming(argv, stdin, timeout, full_env, on_stdout)
        return Result(
            proc.returncode,
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
        )

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        dest = Path(os.path.expanduser(remote))
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        os.close(fd)
        try:
            shutil.copyfile(local, tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, remote: str, local: Path) -> None:
        shutil.copyfile(os.path.expanduser(remote), local)


def _run_streaming(argv, stdin, timeout, env, on_stdout):
    """subprocess.run with stdout handed to ``on_stdout`` as it comes (stderr collected)."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    stderr = bytearray()

    def feed() -> None:
        try:
            if stdin:
                proc.stdin.write(stdin)
            proc.stdin.close()
        except OSError:  # the command exited without reading all of its stdin
            pass

    def drain_stderr() -> None:
        stderr.extend(proc.stderr.read())

    helpers = [threading.Thread(target=feed), threading.Thread(target=drain_stderr)]
    for thread in helpers:
        thread.start()
    stdout = bytearray()
    timer = threading.Timer(timeout, proc.kill) if timeout is not None else None
    if timer:
        timer.start()
    try:
        while chunk := proc.stdout.read1(65536):
            stdout += chunk
            on_stdout(chunk)
        proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for thread in helpers:
            thread.join()
    return proc, bytes(stdout), bytes(stderr)


def quote(value: object) -> str:
    """Quote one value for a POSIX shell. Every value that reaches a shell goes through here."""
    return shlex.quote(str(value))
