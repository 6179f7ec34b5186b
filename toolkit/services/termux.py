"""termux-services (runit) on Android, without root: a service directory per service.

termux-services is runit: ``runsvdir`` watches ``$PREFIX/var/service``, one ``runsv`` per service
directory runs its ``run`` script (and ``log/run``, here ``svlogd``) and restarts it when it
dies. toolkit renders each service's directory into its data dir (``termux/<name>/run`` and
``log/run``) and links it in as ``$PREFIX/var/service/toolkit-<name>``.

SSH commands are not login shells: the profile script that sets ``SVDIR`` and starts
``runsvdir`` has not run. So every command here uses full paths (sv(8) does not look an argument
starting with ``/`` up in SVDIR), and when ``runsvdir`` is not running it is started the way
termux-services starts it, with ``service-daemon start`` (start-stop-daemon -b: its own
session, so it outlives the SSH connection). ``termux_wake_lock: true`` (an inventory variable)
takes Termux's wake lock so that Android does not put the CPU to sleep under the engine.
"""

from __future__ import annotations

from toolkit.hosts.connection import quote
from toolkit.services import manifest
from toolkit.services.definition import Service
from toolkit.services.manager import (
    STATE_MARK,
    DefinitionFile,
    ServiceManager,
    ServiceStatus,
    file_log_script,
)

DEFAULT_PREFIX = "/data/data/com.termux/files/usr"
LINK_PREFIX = "toolkit-"  # $PREFIX/var/service/toolkit-<name>: whose services these are
PACKAGES = ("python", "termux-services")  # toolkit's virtualenv and proxy; the supervisor
SUPERVISE_WAIT_S = 30  # runsvdir looks for new service directories every 5 seconds
DAEMON_UP = "runsvdir-up"


def link_name(service: Service) -> str:
    return LINK_PREFIX + service.name


# `sv status` of one service -> its @svc line. runit keeps neither a restart count nor the exit
# status: "-" for both. "down ..., want up" is a service runsv is about to start again.
STATE_AWK = r"""
{
  line = $0; sub(/; run: log:.*/, "", line)
  st = "stopped"; pid = "-"; up = "-"; ex = "-"
  if (line ~ /^run: /) st = "running"
  else if (line ~ /^finish: / || (line ~ /^down: / && line ~ /want up/)) st = "restarting"
  else if (line ~ /^(fail|warning): /) ex = "runsv is not running"
  if (match(line, /\(pid [0-9]+\) /)) {
    pid = substr(line, RSTART + 5, RLENGTH - 7); sub(/\(pid [0-9]+\) /, "", line)
  }
  if (st == "running" && match(line, /: [0-9]+s/)) up = substr(line, RSTART + 2, RLENGTH - 3)
  printf "%s\t%s\t%s\t%s\t%s\t-\t%s\n", mark, n, st, pid, up, ex
}
"""


class Termux(ServiceManager):
    name = "termux"
    package_manager = "pkg"
    packages = PACKAGES

    def __init__(self, prefix: str = DEFAULT_PREFIX, wake_lock: bool = False):
        self.prefix = prefix.rstrip("/") or DEFAULT_PREFIX
        self.wake_lock = wake_lock
        self.service_dir = f"{self.prefix}/var/service"
        self.pid_file = f"{self.prefix}/var/run/service-daemon.pid"

    def bin(self, program: str) -> str:
        return quote(f"{self.prefix}/bin/{program}")

    def link(self, service: Service) -> str:
        return quote(f"{self.service_dir}/{link_name(service)}")

    def definitions(self, services, data_dir, host):
        files = []
        for s in services:
            variables = {
                "service": s,
                "host": host,
                "prefix": self.prefix,
                "log_dir": f"{data_dir}/logs/{s.name}",
            }
            files.append(DefinitionFile(f"termux/{s.name}/run", "termux-run.j2", variables, 0o755))
            files.append(
                DefinitionFile(f"termux/{s.name}/log/run", "termux-log-run.j2", variables, 0o755)
            )
        return files + [manifest.definition(self, services, data_dir)]

    def _daemon_alive(self) -> str:
        pid = quote(self.pid_file)
        return f'[ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null'

    def probe(self, services: list[Service]) -> str:
        lines = [f"{self._daemon_alive()} && echo {DAEMON_UP}"]
        for s in services:
            lines.append(f"[ -L {self.link(s)} ] && {self.bin('sv')} status {self.link(s)} 2>&1")
        return "\n".join(lines) + "\ntrue"

    def parse_status(self, observed: str, services: list[Service]) -> ServiceStatus:
        status = ServiceStatus(daemon_up=DAEMON_UP in observed.split())
        by_link = {link_name(s): s.name for s in services}
        for line in observed.splitlines():
            state, _, rest = line.partition(": ")
            if state != "run" or not status.daemon_up:
                continue
            link = rest.split(":", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            if link in by_link:
                status.running.add(by_link[link])
        return status

    def converge_script(self, status, services, start, restart, redefined) -> str:
        sv, svdir = self.bin("sv"), quote(self.service_dir)
        runsvdir = f"{self.prefix}/bin/runsvdir"
        lines = [
            f"[ -x {quote(runsvdir)} ] || {{ echo '{runsvdir} not found: "
            "pkg install termux-services' >&2; exit 1; }",
            f"mkdir -p {svdir} {quote(self.prefix + '/var/run')} || exit 1",
        ]
        for s in services:
            lines.append(f'ln -sfn "$TK_DATA"/termux/{quote(s.name)} {self.link(s)} || exit 1')
        # As termux-services' profile script does, with the variables it sets there.
        lines.append(
            f"{self._daemon_alive()} || SVDIR={svdir} LOGDIR={quote(self.prefix + '/var/log')} "
            f"{self.bin('service-daemon')} start </dev/null >/dev/null 2>&1 || exit 1"
        )
        # runsvdir finds a new directory within 5 s and starts its runsv; sv status answers once
        # that runsv does (a supervise/ok left from an earlier run is no proof). Bounded.
        for s in services:
            lines.append(
                f"tk_i=0; until {sv} status {self.link(s)} >/dev/null 2>&1; do "
                f"[ $tk_i -ge {SUPERVISE_WAIT_S * 5} ] && {{ echo 'runsvdir did not start "
                f"{link_name(s)} within {SUPERVISE_WAIT_S}s' >&2; exit 1; }}; "
                "sleep 0.2; tk_i=$((tk_i + 1)); done"
            )
        by_name = {s.name: s for s in services}
        for name in restart:
            lines.append(f"{sv} restart {self.link(by_name[name])} >/dev/null || exit 1")
        for name in start:
            down = f'"$TK_DATA"/termux/{quote(name)}/down'
            lines.append(f"rm -f {down}; {sv} up {self.link(by_name[name])} || exit 1")
        if self.wake_lock:
            lines.append(f"{self.bin('termux-wake-lock')} || exit 1")
        return "\n".join(lines) + "\n"

    def stop_script(self, services: list[Service]) -> str:
        """Unlink each service (runsvdir then leaves it alone) and make its runsv exit, which
        stops the program and its logger. runsvdir stays: it is termux-services' own daemon
        (sshd may be one of its services); packages and models stay too."""
        script = self.remove_script(services)
        if self.wake_lock:
            script += f"{self.bin('termux-wake-unlock')} 2>/dev/null\ntrue\n"
        return script

    def remove_script(self, services: list[Service]) -> str:
        """As ``stop_script`` for these services alone (their directories stay: runsv may still
        be leaving them, and a later switch back renders them again)."""
        sv = self.bin("sv")
        lines = []
        for s in services:
            here = f'"$TK_DATA"/termux/{quote(s.name)}'
            lines.append(f"rm -f {self.link(s)}")
            lines.append(f"[ -p {here}/supervise/ok ] && {sv} exit {here} >/dev/null 2>&1")
        return "\n".join(lines) + "\ntrue\n"

    def state_script(self, names: str) -> str:
        return (
            f"for tk_s in {names}; do\n"
            # By the service's own directory (a path: sv needs no SVDIR), with termux-services'
            # sv wherever $PREFIX is (status reads no facts).
            f'  "${{PREFIX:-{DEFAULT_PREFIX}}}"/bin/sv status "$TK_DATA"/termux/"$tk_s" 2>&1 '
            "| head -n 1 | "
            f'awk -v n="$tk_s" -v mark={STATE_MARK} {quote(STATE_AWK)}\n'
            "done"
        )

    def log_location(self, service: Service, data_dir: str) -> str:
        return f"{data_dir}/logs/{service.name}/current"

    def log_script(self, name: str, lines: int, cursor: str | None = None) -> str:
        return file_log_script(f'"$TK_DATA"/logs/{name}/current', lines, cursor)
