"""systemd units: what a real server uses. System units as root, user units otherwise.

Units are rendered into the data dir and enabled by path (``systemctl enable FILE`` links them),
so toolkit's files stay in one place and ``down`` can find them all.
"""

from __future__ import annotations

from toolkit.hosts.connection import quote
from toolkit.services import manifest
from toolkit.services.definition import Service
from toolkit.services.manager import STATE_MARK, DefinitionFile, ServiceManager, ServiceStatus

PROPERTIES = "ActiveState,SubState,ExecMainStatus,ExecMainCode,NRestarts,ExecMainStartTimestampMonotonic,MainPID"
# `systemctl show` KEY=VALUE lines of one unit -> its @svc line. ExecMainCode is how the main
# process last ended: 1 exited (ExecMainStatus is its exit status), 2 killed, 3 dumped core
# (ExecMainStatus is the signal number). Uptime from the start time on the monotonic clock.
STATE_AWK = r"""
{ i = index($0, "="); v[substr($0, 1, i - 1)] = substr($0, i + 1) }
END {
  a = v["ActiveState"]; s = v["SubState"]; st = "stopped"
  if (a == "active" || a == "reloading") st = "running"
  else if (a == "activating" && s == "auto-restart") st = "restarting"
  else if (a == "activating") st = "starting"
  else if (a == "failed") st = "crashed"
  else if (a == "deactivating") st = "stopping"
  c = v["ExecMainCode"] + 0; ex = "-"
  if (c == 1 && v["ExecMainStatus"] != "") ex = "exit " v["ExecMainStatus"]
  else if (c == 2 || c == 3) ex = "signal " v["ExecMainStatus"]
  pid = (v["MainPID"] + 0 > 0) ? v["MainPID"] + 0 : "-"
  up = "-"; t = v["ExecMainStartTimestampMonotonic"] + 0
  if (pid != "-" && t > 0 && now > 0) up = int(now - t / 1000000)
  rs = (v["NRestarts"] != "") ? v["NRestarts"] : "-"
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mark, n, st, pid, up, rs, ex
}
"""


def unit_name(service: Service) -> str:
    return f"toolkit-{service.name}.service"


class Systemd(ServiceManager):
    name = "systemd"

    @property
    def kind(self) -> str:
        return "systemd" if self.system else "systemd-user"

    def __init__(self, system: bool, user: str | None = None):
        self.system = system
        self.user = user
        self.ctl = "systemctl" if system else "systemctl --user"

    def definitions(self, services, data_dir, host):
        return [
            DefinitionFile(
                f"systemd/{unit_name(s)}",
                "systemd.service.j2",
                {"service": s, "host": host, "system": self.system, "user": self.user},
            )
            for s in services
        ] + [manifest.definition(self, services, data_dir)]

    def probe(self, services: list[Service]) -> str:
        units = " ".join(quote(unit_name(s)) for s in services)
        return f'for u in {units}; do printf \'%s %s\\n\' "$u" "$({self.ctl} is-active "$u")"; done'

    def parse_status(self, observed: str, services: list[Service]) -> ServiceStatus:
        by_unit = {unit_name(s): s.name for s in services}
        status = ServiceStatus(daemon_up=True)
        for line in observed.splitlines():
            unit, _, state = line.partition(" ")
            if unit in by_unit and state.strip() in ("active", "activating", "reloading"):
                status.running.add(by_unit[unit])
        return status

    def converge_script(self, status, services, start, restart, redefined) -> str:
        unit = {s.name: quote(unit_name(s)) for s in services}
        lines = []
        if redefined:
            lines.append(f"{self.ctl} daemon-reload || exit 1")
            for s in services:
                lines.append(
                    f'{self.ctl} enable "$TK_DATA"/systemd/{unit[s.name]} >/dev/null || exit 1'
                )
        if restart:
            lines.append(f"{self.ctl} restart {' '.join(unit[n] for n in restart)} || exit 1")
        if start:
            lines.append(f"{self.ctl} start {' '.join(unit[n] for n in start)} || exit 1")
        return "\n".join(lines) + "\n"

    def stop_script(self, services: list[Service]) -> str:
        # one unit at a time: a unit that is not there (a model's spare slot) stops no other
        lines = [f"{self.ctl} disable --now {quote(unit_name(s))} 2>/dev/null" for s in services]
        return "\n".join(lines) + "\ntrue\n"

    def remove_script(self, services: list[Service]) -> str:
        lines = []
        for s in services:
            unit = quote(unit_name(s))
            lines.append(f"{self.ctl} disable --now {unit} >/dev/null 2>&1")
            lines.append(f'rm -f "$TK_DATA"/systemd/{unit}')
        lines.append(f"{self.ctl} daemon-reload")
        return "\n".join(lines) + "\ntrue\n"

    def state_script(self, names: str) -> str:
        return (
            "tk_now=$(cut -d' ' -f1 /proc/uptime 2>/dev/null)\n"
            f"for tk_s in {names}; do\n"
            f'  {self.ctl} show -p {PROPERTIES} "toolkit-$tk_s.service" 2>/dev/null | '
            f'awk -v n="$tk_s" -v now="${{tk_now:-0}}" -v mark={STATE_MARK} {quote(STATE_AWK)}\n'
            "done"
        )

    def journal(self) -> str:
        return "journalctl" if self.system else "journalctl --user"

    def log_location(self, service: Service, data_dir: str) -> str:
        return f"{self.journal()} -u {unit_name(service)}"

    def log_script(self, name: str, lines: int, cursor: str | None = None) -> str:
        unit = f"toolkit-{name}.service"
        since = f"--after-cursor={quote(cursor)}" if cursor else f"-n {int(lines)}"
        return f"{self.journal()} -u {unit} {since} -o cat --no-pager --show-cursor 2>&1"

    def read_log(self, output: str) -> tuple[str, str | None]:
        """journalctl ends with ``-- cursor: ...`` (the last entry read) when it read any."""
        text, _, last = output.rstrip("\n").rpartition("\n")
        if last.startswith("-- cursor: "):
            return text + "\n" if text else "", last[len("-- cursor: ") :]
        return output, None
