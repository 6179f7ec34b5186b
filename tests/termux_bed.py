"""A Termux-like host in the SSH test bed: a STAND-IN for an Android phone running Termux.

What is real: OpenSSH on loopback, a non-root user, Debian's runit (``runsvdir``, ``runsv``,
``sv``, ``svlogd``: the supervisor termux-services packages), dpkg's ``start-stop-daemon`` and
``dpkg -s`` (reading the bed's own package database), and the real llama.cpp engine serving the
real model. What stands in for Android:

- the Termux tree: ``$PREFIX`` is ``<home>/files/usr`` with ``bin``, ``var/service``, ``var/run``,
  ``var/log``, ``var/lib/dpkg`` and ``tmp``; sshd gives every session ``TERMUX_VERSION``,
  ``PREFIX``, ``TMPDIR`` and a ``PATH`` of ``$PREFIX/bin`` then a ``system/bin`` standing in for
  Android's toybox: this machine's programs minus python, runit, dpkg, apt, sudo and compilers,
  so what a phone lacks until ``pkg install`` is missing here too;
- ``pkg``: installs the packages the test built (``PackageRepo``) from a local directory into
  ``$PREFIX`` and records them in ``$PREFIX/var/lib/dpkg/status``; with no repository ("no
  network") it fails like apt does and installs nothing;
- the packages: ``python`` (this machine's python3), ``termux-services`` (links to Debian's
  runit, and ``service-daemon``, ``sv-enable``, ``sv-disable`` written here from termux-services'
  documented behaviour), ``llama-cpp`` (a ``llama-server`` that runs the real llama.cpp engine
  of the xllamacpp wheel through toolkit/runtimes/xllamacpp_server.py);
- ``termux-wake-lock`` / ``termux-wake-unlock`` (Termux's app takes the lock; here a file).

Not tried here: a real phone, Android's /bin/sh (mksh; here dash), its phantom-process killer.
Everything the bed's user runs is ended by pid when the bed stops (runsvdir, detached in its
own session, is no child of sshd).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import textwrap
import time
from pathlib import Path

from tests.sshbed import SSHD, BedHost, SSHBed, _free_port, _sshd_config

REPO = Path(__file__).resolve().parent.parent
TERMUX_VERSION = "0.118.3"
# Programs a phone does not have before `pkg install` (or at all, without root).
NOT_ON_A_PHONE = re.compile(
    r"^(python.*|pip.*|pydoc.*|idle.*|runsv|runsvdir|runsvchdir|sv|svlogd|chpst|utmpset|runit.*|"
    r"dpkg.*|apt.*|start-stop-daemon|sudo.*|su|systemctl|cmake.*|c\+\+|g\+\+.*|gcc.*|cc|"
    r"clang.*|llama.*|ollama|pkg)$"
)
SYSTEM_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")


class PackageRepo:
    """The packages the bed's ``pkg`` installs: ``<root>/<name>/{version,files/...}``, where
    ``files`` is laid out relative to ``$PREFIX``. Readable by every user."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)

    def add(self, name: str, version: str, files: dict[str, str | Path]) -> None:
        """``files``: relpath -> text of an executable script, or a Path to link to."""
        package = self.root / name
        shutil.rmtree(package, ignore_errors=True)
        (package / "files").mkdir(parents=True)
        (package / "version").write_text(version + "\n")
        for relpath, content in files.items():
            target = package / "files" / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                target.symlink_to(content)
            else:
                target.write_text(content)
                target.chmod(0o755)
        for path in [package, *package.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IROTH | stat.S_IXOTH | stat.S_IRGRP)


def script(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def termux_packages(repo: PackageRepo, engine_dir: Path) -> None:
    """python, termux-services and llama-cpp, as the stand-in's packages."""
    python = Path(os.path.realpath("/usr/bin/python3"))
    repo.add("python", "3.11-standin", {"bin/python3": python, "bin/python": python})
    runit = {
        f"bin/{p}": Path(f"/usr/bin/{p}") for p in ("runsvdir", "runsv", "sv", "svlogd", "chpst")
    }
    repo.add(
        "termux-services",
        "0.13-standin",
        {
            **runit,
            # As termux-services' service-daemon is documented to do: runsvdir started by
            # start-stop-daemon -b (a session of its own, no terminal, outlives the login).
            "bin/service-daemon": script("""
                #!/bin/sh
                # service-daemon (stand-in for termux-services' own, from its documented behaviour)
                SVDIR="${SVDIR:-$PREFIX/var/service}"
                PIDFILE="$PREFIX/var/run/service-daemon.pid"
                mkdir -p "$PREFIX/var/run" "$SVDIR"
                case "$1" in
                  start) exec start-stop-daemon -S -b -o -m -p "$PIDFILE" \\
                           -x "$PREFIX/bin/runsvdir" -d "$PREFIX" -- "$SVDIR" ;;
                  stop) start-stop-daemon -K -o -p "$PIDFILE" -x "$PREFIX/bin/runsvdir" ;;
                  *) echo "usage: service-daemon start|stop" >&2; exit 1 ;;
                esac
                """),
            "bin/sv-enable": script("""
                #!/bin/sh
                # sv-enable (stand-in): autostart the service and start it now
                rm -f "${SVDIR:-$PREFIX/var/service}/$1/down" && exec sv up "$1"
                """),
            "bin/sv-disable": script("""
                #!/bin/sh
                # sv-disable (stand-in): no autostart, and stop it now
                touch "${SVDIR:-$PREFIX/var/service}/$1/down" && exec sv down "$1"
                """),
            "etc/profile.d/start-services.sh": script("""
                # (stand-in) what a Termux login shell runs; SSH commands do not run it
                export SVDIR="$PREFIX/var/service" LOGDIR="$PREFIX/var/log"
                (service-daemon start >/dev/null 2>&1 &)
                """),
        },
    )
    repo.add(
        "llama-cpp",
        "0.0.0-b11549-standin",
        {
            "bin/llama-server": script(f"""
                #!/bin/sh
                # llama-server of the stand-in llama-cpp package: the real llama.cpp engine
                # (xllamacpp wheel) behind llama-server's flags
                if [ "$1" = --version ]; then echo "version: 11549 (xllamacpp, stand-in for Termux's llama-cpp)"; exit 0; fi
                PYTHONPATH={engine_dir} exec {python} {engine_dir}/xllamacpp_server.py "$@"
                """),
        },
    )


def engine_dir(dest: Path) -> Path:
    """The xllamacpp package and toolkit's shim, where the bed's user can read them (hard links
    when on the same disk)."""
    import xllamacpp

    source = Path(xllamacpp.__file__).parent
    target = dest / "xllamacpp"
    if not target.exists():

        def link(src, dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(source, target, copy_function=link)
    shutil.copy(REPO / "toolkit/runtimes/xllamacpp_server.py", dest / "xllamacpp_server.py")
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IROTH | stat.S_IRGRP | (
            stat.S_IXOTH | stat.S_IXGRP if path.is_dir() or path.stat().st_mode & stat.S_IXUSR else 0
        ))  # fmt: skip
    return dest


class TermuxBed(SSHBed):
    """One Termux-like host (see the module docstring); ``repo`` is what its pkg installs from,
    None for a phone with no network."""

    def __init__(self, repo: PackageRepo | None):
        super().__init__(count=1)
        self.repo = repo
        self.uid: int | None = None

    @property
    def host(self) -> BedHost:
        return self.hosts[0]

    @property
    def prefix(self) -> Path:
        return self.host.home / "files" / "usr"

    @property
    def system_bin(self) -> Path:
        assert self.base is not None
        return self.base / "system" / "bin"

    def _prepare_host(self, index: int) -> BedHost:
        host = super()._prepare_host(index)
        entry = pwd.getpwnam(host.user)
        self.uid = entry.pw_uid
        self._android_system_bin()
        prefix = host.home / "files" / "usr"
        for sub in ("bin", "etc", "lib", "tmp", "var/service", "var/run", "var/log",
                    "var/lib/dpkg/info", "var/lib/dpkg/updates"):  # fmt: skip
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        (prefix / "var/lib/dpkg/status").write_text("")
        (prefix / "var/lib/dpkg/available").write_text("")
        bootstrap = {  # what Termux's bootstrap has before any pkg install
            "sh": Path("/bin/dash"),
            "start-stop-daemon": Path(
                shutil.which("start-stop-daemon") or "/usr/sbin/start-stop-daemon"
            ),
            "dpkg": script(f"""
                #!/bin/sh
                exec /usr/bin/dpkg --admindir="{prefix}/var/lib/dpkg" "$@"
                """),
            "dpkg-query": script(f"""
                #!/bin/sh
                exec /usr/bin/dpkg-query --admindir="{prefix}/var/lib/dpkg" "$@"
                """),
            "pkg": self._pkg_script(prefix),
            "termux-wake-lock": script(f"""
                #!/bin/sh
                # stand-in: Termux's app takes a partial wake lock; here a file says it is held
                date +%s > "{prefix}/tmp/wake-lock"
                """),
            "termux-wake-unlock": script(f"""
                #!/bin/sh
                rm -f "{prefix}/tmp/wake-lock"
                """),
        }
        for name, content in bootstrap.items():
            path = prefix / "bin" / name
            if isinstance(content, Path):
                path.symlink_to(content)
            else:
                path.write_text(content)
                path.chmod(0o755)
        for path in [host.home / "files", *(host.home / "files").rglob("*")]:
            os.lchown(path, entry.pw_uid, entry.pw_gid)
        return host

    def _pkg_script(self, prefix: Path) -> str:
        repo = self.repo.root if self.repo else "/nonexistent/toolkit-termux-repo"
        return script(f"""
            #!/bin/sh
            # pkg, stand-in for Termux's: installs the test's packages from a local directory
            REPO="{repo}"
            PREFIX="{prefix}"
            STATUS="$PREFIX/var/lib/dpkg/status"
            cmd="$1"; shift
            case "$cmd" in install|i|in|ins) ;; *) echo "pkg (stand-in): only install" >&2; exit 1 ;; esac
            names=""
            for a in "$@"; do case "$a" in -*) ;; *) names="$names $a" ;; esac; done
            if [ ! -d "$REPO" ]; then
              echo "Err:1 https://packages-cf.termux.dev/apt/termux-main stable InRelease" >&2
              echo "  Could not resolve host: packages-cf.termux.dev" >&2
              echo "Reading package lists..." >&2
              for n in $names; do
                dpkg -s "$n" >/dev/null 2>&1 || echo "E: Unable to locate package $n" >&2
              done
              exit 100
            fi
            missing=""
            for n in $names; do [ -d "$REPO/$n" ] || {{ echo "E: Unable to locate package $n" >&2; missing=1; }}; done
            [ -z "$missing" ] || exit 100
            for n in $names; do
              if dpkg -s "$n" >/dev/null 2>&1; then echo "$n is already the newest version."; continue; fi
              v=$(cat "$REPO/$n/version")
              echo "Setting up $n ($v) ..."
              (cd "$REPO/$n/files" && tar -cf - .) | (cd "$PREFIX" && tar -xf -) || exit 1
              printf 'Package: %s\\nStatus: install ok installed\\nPriority: optional\\nSection: misc\\nMaintainer: toolkit tests\\nArchitecture: %s\\nVersion: %s\\nDescription: stand-in package of the Termux test bed\\n\\n' \\
                "$n" all "$v" >> "$STATUS"
            done
            """)

    def _android_system_bin(self) -> None:
        """This machine's programs minus what a phone lacks (NOT_ON_A_PHONE)."""
        target = self.system_bin
        if target.exists():
            return
        target.mkdir(parents=True)
        for directory in SYSTEM_DIRS:
            if not os.path.isdir(directory):
                continue
            for entry in os.scandir(directory):
                name = entry.name
                if NOT_ON_A_PHONE.match(name) or (target / name).exists():
                    continue
                if os.access(entry.path, os.X_OK) and not entry.is_dir():
                    (target / name).symlink_to(entry.path)
        self.base.chmod(0o755)
        (self.base / "system").chmod(0o755)

    def _launch(self, host: BedHost) -> None:
        import subprocess

        host.port = _free_port()
        prefix = host.home / "files" / "usr"
        config = host.dir / "sshd_config"
        config.write_text(
            _sshd_config(host)
            + f"SetEnv TERMUX_VERSION={TERMUX_VERSION} PREFIX={prefix} TMPDIR={prefix}/tmp "
            f"PATH={prefix}/bin:{self.system_bin} LANG=en_US.UTF-8\n"
        )
        host.log.unlink(missing_ok=True)
        host.process = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(config), "-E", str(host.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    # -- what the tests look at ----------------------------------------------------------

    def processes(self) -> dict[int, str]:
        """pid -> command line of every process the bed's user runs, but its SSH sessions."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != self.uid:
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if cmdline and state != "Z" and not cmdline.startswith("sshd:"):
                found[int(entry.name)] = cmdline
        return found

    def stop(self) -> None:
        """End every process of the bed's user by pid (runsvdir and what it supervises live in
        a session of their own), then the sshd and the rest."""
        if self.uid is not None and not self._stopped:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = list(self.processes())
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + 5
                while pids and time.monotonic() < deadline:
                    pids = [p for p in pids if p in self.processes()]
                    time.sleep(0.1)
        super().stop()
