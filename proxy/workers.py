"""Several proxy processes on one port: a parent that only supervises, N forked workers.

Each worker binds its own listening socket with ``SO_REUSEPORT`` (the kernel spreads new
connections across them), so no accept lock and no thundering herd; where the option is missing,
the workers share one socket the parent bound. The parent binds the address first (without
listening) so a taken port is reported before any worker starts, and keeps it reserved.

The proxy is stateless, so each worker does its own health checks and routes reloads; the
parent forwards SIGHUP to every worker for an immediate reload.

Stopping: SIGTERM or SIGINT to the parent is passed to every worker (each finishes its requests,
see ``server.py``); workers still alive ``GRACE_SECONDS`` later are killed. A worker
also gets SIGTERM if the parent dies without stopping it (Linux ``PR_SET_PDEATHSIG``), so no
worker outlives its parent.

A worker that dies is restarted. If workers keep dying soon after they start (``CRASH_LIMIT``
deaths in a row, each within ``CRASH_WINDOW`` seconds of its start), the parent stops the rest
and exits with status 1 rather than spin.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable

from .sockets import BACKLOG, bind, resolve

logger = logging.getLogger("proxy.workers")

GRACE_SECONDS = 35.0  # a worker's own graceful stop takes up to 30 s
CRASH_WINDOW = 5.0
CRASH_LIMIT = 5
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def run_workers(worker: Callable[[socket.socket], None], host: str, port: int, workers: int) -> int:
    """Run ``worker(listening_socket)`` in ``workers`` forked processes until told to stop.

    Returns 0 after SIGTERM/SIGINT, 1 when workers kept crashing."""
    family, address = resolve(host, port)
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    reserved = bind(family, address, reuse_port)  # raises OSError if the port is taken
    if not reuse_port:
        reserved.listen(BACKLOG)
        reserved.set_inheritable(True)
    address = reserved.getsockname()  # the real port when port was 0
    parent = os.getpid()
    saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    children: dict[int, float] = {}  # pid: started

    def spawn() -> None:
        pid = os.fork()
        if pid:
            children[pid] = time.monotonic()
            return
        status = 1
        try:  # the worker: a fresh start for signals, then the proxy
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            _die_with_parent()
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            if reuse_port:
                reserved.close()
                sock = bind(family, address, True)
                sock.listen(BACKLOG)
            else:
                sock = reserved
            worker(sock)
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    try:
        for _ in range(workers):
            spawn()
        return _supervise(children, spawn)
    finally:
        for pid in children:  # only after an unexpected error in the parent itself
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reserved.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)


def _supervise(children: dict[int, float], spawn: Callable[[], None]) -> int:
    stopping_since: float | None = None
    status = 0
    quick_deaths = 0

    def stop(code: int) -> None:
        nonlocal stopping_since, status
        if stopping_since is None:
            stopping_since = time.monotonic()
            status = code
            _signal_all(children, signal.SIGTERM)

    while children:
        info = signal.sigtimedwait(SIGNALS, 0.5)
        if info is not None:
            if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                stop(0)
            elif info.si_signo == signal.SIGHUP:
                _signal_all(children, signal.SIGHUP)
        while children:  # reap every worker that ended
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            started = children.pop(pid, None)
            if started is None or stopping_since is not None:
                continue
            lived = time.monotonic() - started
            logger.error("worker %d ended (%s) after %.1f s", pid, _describe(wait_status), lived)
            quick_deaths = quick_deaths + 1 if lived < CRASH_WINDOW else 0
            if quick_deaths >= CRASH_LIMIT:
                logger.error("workers keep dying at start; stopping")
                stop(1)
            else:
                spawn()
        if stopping_since is not None and time.monotonic() - stopping_since > GRACE_SECONDS:
            _signal_all(children, signal.SIGKILL)
    return status


def _signal_all(children: dict[int, float], signum: int) -> None:
    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _describe(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        return f"signal {os.WTERMSIG(wait_status)}"
    return f"status {os.waitstatus_to_exitcode(wait_status)}"
