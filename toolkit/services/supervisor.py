"""supervisord from toolkit's virtualenv: the service manager where there is no systemd.

supervisord runs as the connecting user, restarts a crashed program, and stops a program with
its whole process group (stopasgroup/killasgroup), so no engine child outlives its service.
"""

from __future__ import annotations

import xml.parsers.expat
import xmlrpc.client

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.services import manifest
from toolkit.services.definition import Service
from toolkit.services.manager import (
    DefinitionFile,
    ServiceManager,
    ServiceStatus,
    file_log_script,
)

CONF = "supervisor/supervisord.conf"
SOCKET = "run/supervisor.sock"  # as templates/supervisord.conf.j2 puts it
_ALL_PROCESS_INFO = xmlrpc.client.dumps((), "supervisor.getAllProcessInfo")
_CTL = '"$TK_DATA/venv/bin/supervisorctl" -c "$TK_DATA/supervisor/supervisord.conf"'

# `supervisorctl status` lines ("NAME  RUNNING  pid 12, uptime 1 day, 0:00:05") on stdin, and
# supervisord's own log (logf), whose "exited: NAME (exit status 2; not expected)" lines since
# its last start count the restarts and tell how each service last ended. One that exited since
# it last reached RUNNING ("success: NAME entered RUNNING state") and is STARTING is restarting.
STATE_AWK = r"""
BEGIN {
  while ((getline l < logf) > 0) {
    if (index(l, "supervisord started with pid")) { split("", r); split("", x); split("", c) }
    p = index(l, " success: ")
    if (p) { split(substr(l, p + 10), w, " "); c[w[1]] = 0 }
    p = index(l, " exited: ")
    if (p) {
      rest = substr(l, p + 9); sp = index(rest, " (")
      n = substr(rest, 1, sp - 1); why = substr(rest, sp + 2)
      sub(/;.*/, "", why); sub(/\).*/, "", why)
      r[n]++; c[n]++; x[n] = why
    }
  }
}
$2 ~ /^[A-Z]+$/ { up_daemon = 1; seen[$1] = $0 }
END {
  k = split(names, list, " ")
  for (i = 1; i <= k; i++) {
    n = list[i]; line = seen[n]; split(line, f, " "); s = f[2]
    st = "stopped"
    if (s == "RUNNING") st = "running"
    else if (s == "STARTING") st = (c[n] > 0) ? "restarting" : "starting"
    else if (s == "BACKOFF") st = "restarting"; else if (s == "EXITED" || s == "FATAL") st = "crashed"
    else if (s == "STOPPING") st = "stopping"
    pid = "-"; if (match(line, /pid [0-9]+/)) pid = substr(line, RSTART + 4, RLENGTH - 4)
    up = "-"
    if (match(line, /uptime .*/)) {
      u = substr(line, RSTART + 7); d = 0
      if (match(u, /^[0-9]+ days?, /)) { d = u + 0; u = substr(u, RLENGTH + 1) }
      split(u, h, ":"); up = d * 86400 + h[1] * 3600 + h[2] * 60 + h[3]
    }
    ex = (n in x) ? x[n] : (up_daemon ? "-" : "supervisord is not running")
    sub(/^exit status /, "exit ", ex); sub(/^terminated by /, "signal ", ex)
    printf "@svc\t%s\t%s\t%s\t%s\t%s\t%s\n", n, st, pid, up, (n in r) ? r[n] : 0, ex
  }
}
"""


def environment_line(env: dict[str, str]) -> str:
    """supervisord's ``environment=`` value. Its parser knows no escapes inside quotes, so each
    value is wrapped in the quote it does not contain."""
    pairs = []
    for key, value in env.items():
        quote_char = '"' if '"' not in value else "'"
        if quote_char in value:
            raise ToolkitError(f"environment value of {key} holds both quote kinds: {value!r}")
        pairs.append(f"{key}={quote_char}{value.replace('%', '%%')}{quote_char}")
    return ",".join(pairs)


class Supervisor(ServiceManager):
    name = "supervisor"
    restarts_redefined = True  # `supervisorctl update` restarts programs whose config changed

    def definitions(self, services, data_dir, host):
        files = [DefinitionFile(CONF, "supervisord.conf.j2", {"data_dir": data_dir, "host": host})]
        for service in services:
            files.append(
                DefinitionFile(
                    f"supervisor/programs/{service.name}.conf",
                    "supervisor-program.conf.j2",
                    {
                        "data_dir": data_dir,
                        "host": host,
                        "service": service,
                        "environment": environment_line(service.env),
                    },
                )
            )
        return files + [manifest.definition(self, services, data_dir)]

    def probe(self, services: list[Service]) -> str:
        # supervisord's XML-RPC on its socket through curl when the host has it: ~5 ms, where
        # supervisorctl (a Python start and its imports) took ~75 ms of a no-op's ~250 ms probe
        return (
            f'if [ -S "$TK_DATA/{SOCKET}" ] && command -v curl >/dev/null 2>&1; then '
            f'curl -s --max-time 10 --unix-socket "$TK_DATA/{SOCKET}" '
            f"-H 'Content-Type: text/xml' --data {quote(_ALL_PROCESS_INFO)} http://localhost/RPC2; "
            f'elif [ -x "$TK_DATA/venv/bin/supervisorctl" ]; then {_CTL} status 2>&1; fi; true'
        )

    def parse_status(self, observed: str, services: list[Service]) -> ServiceStatus:
        """From the probe: supervisord's getAllProcessInfo answer, or supervisorctl's lines."""
        names = {s.name for s in services}
        status = ServiceStatus(daemon_up=False)
        if observed.lstrip().startswith("<?xml"):
            try:
                [processes], _ = xmlrpc.client.loads(observed.strip())
            except (xmlrpc.client.Error, ValueError, xml.parsers.expat.ExpatError):
                return status  # not an answer: as if supervisord were down (start it)
            status.daemon_up = True
            for process in processes:
                if process["name"] in names and process["statename"] in ("RUNNING", "STARTING"):
                    status.running.add(process["name"])
            return status
        for line in observed.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isupper() and parts[1].isalpha():
                status.daemon_up = True  # a program line means supervisord answered
                if parts[0] in names and parts[1] in ("RUNNING", "STARTING"):
                    status.running.add(parts[0])
        return status

    def converge_script(self, status, services, start, restart, redefined) -> str:
        lines = ['mkdir -p "$TK_DATA/run" "$TK_DATA/logs" || exit 1']
        lines.append(
            f"if ! {_CTL} pid >/dev/null 2>&1; then "
            '"$TK_DATA/venv/bin/supervisord" -c "$TK_DATA/supervisor/supervisord.conf" || exit 1; '
            "tk_started=1; fi"
        )
        # A freshly started supervisord starts every program itself.
        after = []
        if redefined:
            after.append(f"{_CTL} update")
        if restart:
            after.append(f"{_CTL} restart {' '.join(quote(n) for n in restart)}")
        if start:
            after.append(f"{_CTL} start {' '.join(quote(n) for n in start)}")
        if after:
            lines.append('if [ -z "$tk_started" ]; then ' + "; ".join(after) + "; fi")
        # `start` of a program that is already starting/running says so and fails; ignore that.
        return "\n".join(lines) + "\ntrue\n"

    def stop_script(self, services: list[Service]) -> str:
        return (
            f"if {_CTL} pid >/dev/null 2>&1; then\n"
            f"  tk_pid=$({_CTL} pid)\n"
            f"  {_CTL} stop all >/dev/null 2>&1; {_CTL} shutdown >/dev/null 2>&1\n"
            '  tk_i=0; while kill -0 "$tk_pid" 2>/dev/null && [ $tk_i -lt 150 ]; do '
            "sleep 0.2; tk_i=$((tk_i+1)); done\n"
            "  kill -0 \"$tk_pid\" 2>/dev/null && { echo 'supervisord did not stop' >&2; exit 1; }\n"
            "fi\ntrue\n"
        )

    def remove_script(self, services: list[Service]) -> str:
        # `stop` returns once the program has stopped; `remove` takes it out of the running
        # configuration; without its file the next `update` does not bring it back
        lines = []
        for s in services:
            name = quote(s.name)
            lines.append(
                f"if {_CTL} pid >/dev/null 2>&1; then {_CTL} stop {name} >/dev/null 2>&1; "
                f"{_CTL} remove {name} >/dev/null 2>&1; fi"
            )
            lines.append(f'rm -f "$TK_DATA"/supervisor/programs/{quote(s.name + ".conf")}')
        return "\n".join(lines) + "\ntrue\n"

    def state_script(self, names: str) -> str:
        return (
            f'{{ [ -x "$TK_DATA/venv/bin/supervisorctl" ] && {_CTL} status 2>&1; }} | '
            f'awk -v names="$(echo {names})" -v logf="$TK_DATA/logs/supervisord.log" '
            f"{quote(STATE_AWK)}"
        )

    def log_location(self, service: Service, data_dir: str) -> str:
        return f"{data_dir}/logs/{service.name}.log"

    def log_script(self, name: str, lines: int, cursor: str | None = None) -> str:
        return file_log_script(f'"$TK_DATA"/logs/{name}.log', lines, cursor)
