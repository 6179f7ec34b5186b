"""``toolkit status``: is every service of every host up, healthy and answering, right now.

No playbook needed: each host's services manifest (``services.json``, written by ``apply``
beside the service definitions) says which manager runs which services. One probe per host
(one SSH round trip), hosts in parallel. Per service: state as its manager sees it (starting,
running, restarting, crashed with its exit, stopped), pid, uptime, restarts, RSS, model and port,
health and its latency, and the last log lines of one that is not running or just restarted; per
host: the proxy's requests and errors per model, GPU memory (nvidia-smi), disk used by models
and free.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from toolkit.errors import ToolkitError
from toolkit.hosts.connect import connect
from toolkit.hosts.connection import Connection, quote
from toolkit.hosts.shell import data_dir_assignment
from toolkit.inventory import Host
from toolkit.services import manifest
from toolkit.services.manager import ServiceState, parse_states
from toolkit.variables import LazyVars

PART = "@@toolkit-part "  # starts each section of the probe's answer
LOG_LINES = 20  # log lines read for each service (shown for those that are not fine)
RECENT_RESTART_S = 600
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: --watch draws in place  # a service restarted this recently shows its last exit and log lines
PROBE_SOURCE = Path(__file__).with_name("services") / "status_probe.py"
_NAMES = r"""sed -n 's/^ *"name": "\([A-Za-z0-9-]*\)",*$/\1/p'"""
# pid -> RSS in kB of the process group it leads (an engine's or proxy's workers count too), or
# of the process alone when it leads none; from /proc/*/stat (field 24: resident pages)
_RSS_AWK = r"""
{ pid = $1; sub(/^.*\) /, ""); if (index(pids, " " $3 " ")) t[$3] += $22 * kb
  else if (index(pids, " " pid " ")) t[pid] += $22 * kb }
END { for (p in t) print p, t[p] }
"""


def probe_script(data_dir: str | None) -> str:
    """The one script a host runs for ``status``: manifest, states, RSS, log tails, health and
    traffic, disk and GPUs, each section after a ``PART`` line."""
    dispatch = []
    for kind in ("supervisor", "systemd", "systemd-user", "termux"):
        manager = manifest.manager_for(kind)
        tails = (
            'for tk_s in $tk_names; do echo; echo "@@toolkit-log $tk_s"; '
            f"{manager.log_script(chr(34) + '$tk_s' + chr(34), LOG_LINES)}; done"
        )
        dispatch.append(
            f'  *\'"manager": "{kind}"\'*)\n'
            f"    tk_states=$({manager.state_script('$tk_names')})\n"
            f"    tk_tails=$({tails}) ;;"
        )
    probe = PROBE_SOURCE.read_text()
    return "\n".join(
        [
            data_dir_assignment(data_dir),
            f'echo "{PART}data $TK_DATA"',
            f"echo '{PART}manifest'",
            'tk_m=$(cat "$TK_DATA/services.json" 2>/dev/null) || { echo missing; exit 0; }',
            'printf "%s\\n" "$tk_m"',
            f'tk_names=$(printf "%s\\n" "$tk_m" | {_NAMES} | tr "\\n" " ")',
            'case "$tk_m" in',
            *dispatch,
            "esac",
            f"echo '{PART}states'",
            'printf "%s\\n" "$tk_states"',
            f"echo '{PART}rss'",
            "tk_pids=$(printf '%s\\n' \"$tk_states\" | awk -F'\\t' '$4 ~ /^[0-9]+$/ "
            '{ printf " %s", $4 }\')',
            "tk_kb=$(( $(getconf PAGESIZE 2>/dev/null || echo 4096) / 1024 ))",
            '[ -n "$tk_pids" ] && cat /proc/[0-9]*/stat 2>/dev/null | '
            f'awk -v pids="$tk_pids " -v kb="$tk_kb" {quote(_RSS_AWK)}',
            f"echo '{PART}logs'",
            'printf "%s\\n" "$tk_tails"',
            f"echo '{PART}routes'",
            'cat "$TK_DATA/proxy/routes.yml" 2>/dev/null',
            f"echo '{PART}http'",
            '[ -x "$TK_DATA/venv/bin/python" ] && '
            '"$TK_DATA/venv/bin/python" - "$TK_DATA/services.json" "$TK_DATA/proxy/routes.yml" '
            "<<'TK_PROBE_EOF'",
            probe.rstrip("\n"),
            "TK_PROBE_EOF",
            f"echo '{PART}disk'",
            'df -Pk "$TK_DATA" 2>/dev/null | tail -n 1',
            'du -sk "$TK_DATA/models" 2>/dev/null',
            f"echo '{PART}gpu'",
            "command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi "
            "--query-gpu=index,name,memory.used,memory.total --format=csv,noheader,nounits",
            "true",
        ]
    )


@dataclass
class ServiceReport:
    name: str
    state: str  # starting | running | restarting | crashed | stopping | stopped
    pid: int | None = None
    uptime_s: int | None = None
    restarts: int | None = None
    last_exit: str = ""
    rss_kb: int | None = None
    models: list[str] = field(default_factory=list)
    port: int | None = None
    health: int | None = None  # HTTP status of its health URL; 0: no answer; None: no URL
    health_ms: float | None = None
    log: str = ""  # where its log is
    log_tail: list[str] = field(default_factory=list)  # for one not fine, or just restarted

    @property
    def healthy(self) -> bool:
        return self.state == "running" and self.health in (200, None)


@dataclass
class HostReport:
    host: str
    error: str = ""
    manager: str = ""
    data_dir: str = ""
    services: list[ServiceReport] = field(default_factory=list)
    traffic: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> requests/errors
    models_bytes: int | None = None
    free_bytes: int | None = None
    gpus: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.error and bool(self.services) and all(s.healthy for s in self.services)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["healthy"] = self.healthy
        for entry, service in zip(out["services"], self.services, strict=True):
            entry["healthy"] = service.healthy
        return out


def _sections(output: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for chunk in output.split(PART)[1:]:
        head, _, body = chunk.partition("\n")
        name, _, value = head.partition(" ")
        parts[name] = value if value else body.rstrip("\n")
    return parts


def _log_tails(text: str) -> dict[str, list[str]]:
    tails: dict[str, list[str]] = {}
    for chunk in ("\n" + text).split("\n@@toolkit-log ")[1:]:
        name, _, body = chunk.partition("\n")
        if body.startswith("@cursor "):
            body = body.partition("\n")[2]
        lines = [line for line in body.rstrip("\n").splitlines() if not line.startswith("-- ")]
        tails[name] = lines[-LOG_LINES:]
    return tails


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def _models_by_port(routes_text: str) -> dict[int, list[str]]:
    try:
        routes = yaml.safe_load(routes_text) or {}
    except yaml.YAMLError:
        return {}
    found: dict[int, list[str]] = {}
    for name, route in (routes.get("models") or {}).items():
        for backend in (route or {}).get("backends") or []:
            port = _port(str(backend.get("url", "")))
            if port is not None:
                found.setdefault(port, []).append(str(name))
    return found


def parse_probe(host: str, output: str) -> HostReport:
    parts = _sections(output)
    report = HostReport(host, data_dir=parts.get("data", ""))
    if "manifest" not in parts or parts["manifest"].strip() in ("", "missing"):
        report.error = (
            f"no services manifest in {report.data_dir or 'the data dir'} "
            f"(apply a playbook first, or set toolkit_data_dir in the inventory)"
        )
        return report
    listed = manifest.parse(parts["manifest"], f"{host}:{report.data_dir}")
    report.manager = listed.kind
    states = parse_states(parts.get("states", ""))
    rss = {}
    for line in parts.get("rss", "").splitlines():
        pid, _, kb = line.partition(" ")
        if pid.isdigit() and kb.strip().isdigit():
            rss[int(pid)] = int(kb)
    tails = _log_tails(parts.get("logs", ""))
    by_port = _models_by_port(parts.get("routes", ""))
    try:
        http = json.loads(parts.get("http", "").strip().splitlines()[-1])
    except (ValueError, IndexError):
        http = {}
    report.traffic = http.get("traffic", {})
    for entry in listed.services:
        seen = states.get(entry.name) or ServiceState(entry.name, "stopped")
        health = http.get("health", {}).get(entry.name)
        port = _port(entry.health_url)
        service = ServiceReport(
            entry.name,
            seen.state,
            seen.pid,
            seen.uptime_s,
            seen.restarts,
            seen.last_exit,
            rss.get(seen.pid) if seen.pid else None,
            [] if entry.name == "proxy" else by_port.get(port, []),
            port,
            health["code"] if health else (0 if entry.health_url else None),
            health["ms"] if health else None,
            entry.log,
        )
        if service.state == "running" and service.health not in (200, None):
            service.state = "starting"  # up, but not answering yet (a model still loading)
        recent = seen.restarts and (seen.uptime_s or 0) < RECENT_RESTART_S
        if not service.healthy or recent:
            service.log_tail = tails.get(entry.name, [])
        report.services.append(service)
    disk = parts.get("disk", "").splitlines()
    if disk and len(disk[0].split()) >= 4 and disk[0].split()[3].isdigit():
        report.free_bytes = int(disk[0].split()[3]) * 1024
    if len(disk) > 1 and disk[1].split()[0].isdigit():
        report.models_bytes = int(disk[1].split()[0]) * 1024
    for line in parts.get("gpu", "").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 4 and fields[2].isdigit() and fields[3].isdigit():
            report.gpus.append({"index": fields[0], "name": fields[1],
                                "used_mib": int(fields[2]), "total_mib": int(fields[3])})  # fmt: skip
    return report


def data_dir_of(host: Host) -> str | None:
    """``toolkit_data_dir`` of an inventory host (it may be a template of its variables)."""
    return LazyVars({"inventory_hostname": host.name, **host.vars}).get("toolkit_data_dir")


def probe_host(host: Host, conn: Connection) -> HostReport:
    started = time.monotonic()
    try:
        if host.unsupported:
            raise ToolkitError(host.unsupported)
        out = conn.run(probe_script(data_dir_of(host)), timeout=60)
        report = parse_probe(host.name, out.stdout)
        if not report.data_dir and out.rc != 0:
            report.error = (out.stderr or out.stdout).strip()[-300:] or f"probe exit {out.rc}"
    except (ToolkitError, OSError) as exc:
        report = HostReport(host.name, error=str(exc))
    report.seconds = time.monotonic() - started
    return report


class StatusReader:
    """Probes hosts in parallel, keeping one connection per host (``--watch`` reuses them)."""

    def __init__(self, hosts: list[Host], host_key_policy: str = "strict", forks: int = 20):
        self.hosts = hosts
        self.connections = {h.name: connect(h, host_key_policy=host_key_policy) for h in hosts}
        self.forks = forks

    def read(self) -> list[HostReport]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.forks, len(self.hosts)))) as pool:
            return list(pool.map(lambda h: probe_host(h, self.connections[h.name]), self.hosts))

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()


# -- showing it -------------------------------------------------------------------------------


def _size(kb: int | None) -> str:
    if kb is None:
        return "-"
    return f"{kb / 1024:.0f} MB" if kb < 10 * 1024 * 1024 else f"{kb / 1024 / 1024:.1f} GB"


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _state_text(service: ServiceReport) -> str:
    if service.state in ("crashed", "restarting") and service.last_exit:
        return f"{service.state} ({service.last_exit})"
    return service.state


def _health_text(service: ServiceReport) -> str:
    if service.health is None:
        return "-"
    code = str(service.health) if service.health else "no answer"
    return f"{code} {service.health_ms:.0f} ms" if service.health_ms is not None else code


def render(reports: list[HostReport], style: Callable[..., str] = lambda text, **_: text) -> str:
    """The status of every host as text; ``style`` colours (click.style or plain)."""
    lines = []
    for r in reports:
        word = "healthy" if r.healthy else "UNREACHABLE" if not r.data_dir else "NOT HEALTHY"
        head = f"{r.host}: {word}"
        if r.manager:
            head += f" ({r.manager}; data {r.data_dir})"
        lines.append(style(head, fg="green" if r.healthy else "red", bold=True))
        if r.error:
            lines.append(f"  {r.error}")
            continue
        row = "  {:<26} {:<22} {:>8} {:>8} {:>8} {:>8}  {:<18} {:>5}  {}"
        lines.append(row.format("SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "RSS", "MODEL",
                                "PORT", "HEALTH"))  # fmt: skip
        for s in r.services:
            text = row.format(s.name, _state_text(s), s.pid or "-", _duration(s.uptime_s),
                              "-" if s.restarts is None else s.restarts, _size(s.rss_kb),
                              ",".join(s.models) or "-", s.port or "-", _health_text(s))  # fmt: skip
            lines.append(style(text, fg=None if s.healthy else "red"))
        for s in r.services:
            if not s.log_tail:
                continue
            ended = f", last ended: {s.last_exit}" if s.last_exit else ""
            restarts = f"restarted {s.restarts}x{ended}; " if s.restarts else ""
            lines.append(f"  {s.name}: {restarts}last {len(s.log_tail)} lines of {s.log}:")
            lines += [f"    | {line}" for line in s.log_tail]
        for model, counts in sorted(r.traffic.items()):
            lines.append(f"  proxy: {model}: {counts['requests']} requests, "
                         f"{counts['errors']} errors")  # fmt: skip
        for gpu in r.gpus:
            lines.append(f"  GPU {gpu['index']} {gpu['name']}: {gpu['used_mib']} of "
                         f"{gpu['total_mib']} MiB used")  # fmt: skip
        if r.free_bytes is not None:
            models = _size(r.models_bytes // 1024) if r.models_bytes is not None else "-"
            lines.append(f"  disk: models {models}, {_size(r.free_bytes // 1024)} free")
    return "\n".join(lines)


def watch(reader: StatusReader, draw: Callable[[list[HostReport]], None], every_s: float) -> None:
    """Read and draw again every ``every_s`` seconds until interrupted (Ctrl-C)."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # end like Ctrl-C
    try:
        while True:
            draw(reader.read())
            time.sleep(every_s)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def command(pattern: str, inventories: list[str], defaults: dict, watch_s: float | None,
            as_json: bool, host_key_policy: str) -> int:  # fmt: skip
    """``toolkit status``: exit 0 when every service of every host is running and healthy."""
    import click

    from toolkit.assets import asset_path
    from toolkit.inventory import load_inventory

    sources = inventories or asset_path("inventory/localhost.yml")
    hosts = load_inventory(sources, defaults=defaults).select(pattern)
    if not hosts:
        raise ToolkitError(f'no host matches "{pattern}"')
    reader = StatusReader(hosts, host_key_policy)
    colour = not as_json and click.get_text_stream("stdout").isatty()

    def draw(reports: list[HostReport]) -> None:
        if as_json:
            click.echo(json.dumps([r.as_dict() for r in reports]))
            return
        text = render(reports, click.style if colour else lambda t, **_: t)
        if watch_s:  # home and clear (click.echo would drop them off a terminal), then draw
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(f"{CLEAR}{stamp}  every {watch_s:g} s, Ctrl-C to stop\n\n")
        click.echo(text)

    try:
        if watch_s:
            watch(reader, draw, watch_s)
            return 0
        reports = reader.read()
        draw(reports)
        return 0 if all(r.healthy for r in reports) else 1
    finally:
        reader.close()
