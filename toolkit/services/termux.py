"""termux-services (runit) on Android: a run script per service under $PREFIX/var/service.

Needs `pkg install termux-services` and a restarted Termux session once; toolkit renders the
service directories in its data dir and links them in.
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

SV_DIR = '"$PREFIX/var/service"'
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

    def definitions(self, services, data_dir, host):
        files = []
        for s in services:
            variables = {"service": s, "host": host, "log_dir": f"{data_dir}/logs/{s.name}"}
            files.append(DefinitionFile(f"termux/{s.name}/run", "termux-run.j2", variables, 0o755))
            files.append(
                DefinitionFile(f"termux/{s.name}/log/run", "termux-log-run.j2", variables, 0o755)
            )
        return files + [manifest.definition(self, services, data_dir)]

    def probe(self, services: list[Service]) -> str:
        names = " ".join(quote(s.name) for s in services)
        return f'for s in {names}; do sv status {SV_DIR}/"$s" 2>&1; done; true'

    def parse_status(self, observed: str, services: list[Service]) -> ServiceStatus:
        status = ServiceStatus(daemon_up=True)
        for line in observed.splitlines():
            state, _, rest = line.partition(": ")
            if state == "run":
                name = rest.split(":")[0].rstrip("/").rsplit("/", 1)[-1]
                status.running.add(name)
        return status

    def converge_script(self, status, services, start, restart, redefined) -> str:
        lines = [f"mkdir -p {SV_DIR} || exit 1"]
        for s in services:
            name = quote(s.name)
            lines.append(f'ln -sfn "$TK_DATA"/termux/{name} {SV_DIR}/{name} || exit 1')
        for name in restart:
            lines.append(f"sv restart {SV_DIR}/{quote(name)}")
        for name in start:
            lines.append(f"sv up {SV_DIR}/{quote(name)}")
        return "\n".join(lines) + "\ntrue\n"

    def stop_script(self, services: list[Service]) -> str:
        lines = []
        for s in services:
            name = quote(s.name)
            lines.append(f"sv down {SV_DIR}/{name} 2>/dev/null; rm -f {SV_DIR}/{name}")
        return "\n".join(lines) + "\ntrue\n"

    def state_script(self, names: str) -> str:
        return (
            f"for tk_s in {names}; do\n"
            f'  sv status {SV_DIR}/"$tk_s" 2>&1 | head -n 1 | '
            f'awk -v n="$tk_s" -v mark={STATE_MARK} {quote(STATE_AWK)}\n'
            "done"
        )

    def log_location(self, service: Service, data_dir: str) -> str:
        return f"{data_dir}/logs/{service.name}/current"

    def log_script(self, name: str, lines: int, cursor: str | None = None) -> str:
        return file_log_script(f'"$TK_DATA"/logs/{name}/current', lines, cursor)
