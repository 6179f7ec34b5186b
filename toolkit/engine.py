"""Plan and apply a Site: hosts in parallel, one batched probe per host, only the changes.

Per host: one probe (facts + the current state of every resource), a plan (each resource says
what would change), then — unless ``--check`` — the changes in order, the services that must
(re)start, a wait on their health checks, and one real request through the proxy per model.
A host that fails is reported and the others go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.desired import (
    HEALTH_CHECK_RELPATH,
    PROXY_SERVICE,
    HostDesign,
    design_host,
    health_spec,
)
from toolkit.errors import ToolkitError
from toolkit.hosts.connect import connect
from toolkit.hosts.connection import CommandFailed, Connection, HostUnreachable, quote
from toolkit.hosts.facts import FACTS_SCRIPT, Facts, binaries_probe, parse_facts
from toolkit.hosts.shell import PRELUDE, data_dir_assignment
from toolkit.inventory import Host
from toolkit.offline import is_offline
from toolkit.preflight import check_disk, check_memory, switch_fits
from toolkit.relay.fanout import Fanout
from toolkit.resources.base import Change, HostContext, Resource, RunOptions
from toolkit.resources.model import ModelFile
from toolkit.resources.service import Services
from toolkit.runtimes import binaries, facts_probes
from toolkit.site import Play, Site
from toolkit.switch import switch_mode
from toolkit.workstation import cache_dir

MARK = "@@toolkit@@"


@dataclass
class HostResult:
    host: str
    play: str
    address: str = ""  # where the host is reached (its endpoint's address)
    changes: list[Change] = field(default_factory=list)
    ok: int = 0
    applied: int = 0  # changes applied (fewer than changes when one failed, none under --check)
    failed: bool = False
    unreachable: bool = False
    error: str = ""
    verify: dict[str, Any] = field(default_factory=dict)
    facts: Facts | None = None
    design: HostDesign | None = None
    seconds: float = 0.0
    round_trips: int = 0
    switches: dict[str, str] = field(default_factory=dict)  # model -> how its engine switched

    @property
    def changed(self) -> int:
        return len(self.changes)


UNSAFE_IN_DATA_DIR = '$`"\\'


def has_control_character(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def checked_data_dir(data_dir: Any) -> str | None:
    """``toolkit_data_dir``, refused when it holds a character that is not safe everywhere it
    goes: control characters (a newline would split the lines of service definitions), and
    $ ` " \\, because pip writes the virtualenv's path into a double-quoted shell line at the
    top of the scripts it installs (venv/bin/supervisord) when that path holds a space."""
    if data_dir is None:
        return None
    data_dir = str(data_dir)
    if (
        not data_dir
        or has_control_character(data_dir)
        or any(ch in UNSAFE_IN_DATA_DIR for ch in data_dir)
    ):
        raise ToolkitError(
            f"toolkit_data_dir {data_dir!r} must be a path without control characters "
            f"or any of {UNSAFE_IN_DATA_DIR}"
        )
    return data_dir


def check_service_values(design: HostDesign) -> None:
    """Refuse a service whose command line, directory or environment holds a control character:
    definitions are line-based (supervisord, systemd), so a newline in a value could add lines."""
    for service in design.services:
        for value in [*service.argv, service.workdir, *service.env.values()]:
            if has_control_character(str(value)):
                raise ToolkitError(
                    f"service {service.name}: value {value!r} holds a control character "
                    "(newline, tab...); refusing to write its definition"
                )


VERIFY = -1  # the probe section holding the health check's answer


def probe_script(
    data_dir: str | None,
    resources: list[Resource],
    options: RunOptions,
    verify_spec: str | None = None,
    play: Play | None = None,
) -> str:
    """Facts (with what the play's runtimes probe themselves), every resource's state and, when
    services should be up, their health check (no waiting) and one chat request per model: a
    converged host costs this one round trip."""
    parts = [PRELUDE, data_dir_assignment(data_dir), FACTS_SCRIPT, binaries_probe(binaries())]
    if play is not None:
        parts.append(facts_probes(play.runtimes))
    for index, resource in enumerate(resources):
        parts.append(f"echo '{MARK} {index}'")
        parts.append(f"( {resource.probe(options) or ':'} ) 2>/dev/null")
    if verify_spec:
        checker = f'"$TK_DATA"/{quote(HEALTH_CHECK_RELPATH)}'
        parts.append(f"echo '{MARK} {VERIFY}'")
        parts.append(
            f'[ -x "$TK_DATA/venv/bin/python" ] && [ -f {checker} ] && '
            f'"$TK_DATA/venv/bin/python" {checker} {quote(verify_spec)} 2>/dev/null; true'
        )
    return "\n".join(parts)


def split_probe(output: str) -> tuple[str, dict[int, str]]:
    facts_text, *sections = output.split(MARK + " ")
    observed = {}
    for section in sections:
        index, _, body = section.partition("\n")
        observed[int(index)] = body.rstrip("\n")
    return facts_text, observed


def parse_health(output: str) -> dict | None:
    """health_check.py's JSON answer, or None when it did not run."""
    try:
        report = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return report if isinstance(report, dict) and "health" in report else None


def healthy(report: dict) -> bool:
    return all(code == 200 for code in report["health"].values()) and not any(
        "error" in v for v in report.get("verify", {}).values()
    )


class FactsCache:
    """Facts of the last run per host, so the first probe can already read resource state.

    When the facts a design depends on have changed, the host is probed a second time.
    """

    def __init__(self, root: Path | None = None):
        self.root = root or cache_dir()

    def _path(self, host: Host, data_dir: str | None) -> Path:
        key = f"{host.name}@{host.address}:{host.port}:{data_dir or ''}".replace("/", "_")
        return self.root / "facts" / f"{key}.json"

    def load(self, host: Host, data_dir: str | None) -> Facts | None:
        try:
            raw = json.loads(self._path(host, data_dir).read_text())
            raw.pop("init_system", None)
            return Facts(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def save(self, host: Host, data_dir: str | None, facts: Facts) -> None:
        path = self._path(host, data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(facts.as_dict()))
        os.replace(tmp, path)


def design_key(facts: Facts) -> tuple:
    """The facts a host's design depends on."""
    return (
        facts.data_dir,
        facts.init_system,
        facts.uid == 0,
        tuple(sorted(facts.binaries.items())),
        facts.python3,
        tuple(sorted(facts.probed.items())),
        tuple(facts.services),
    )


@contextlib.contextmanager
def host_failure(result: HostResult) -> Iterator[None]:
    """Record a failure of one host's work in its result: the other hosts go on."""
    try:
        yield
    except HostUnreachable as exc:
        result.failed = result.unreachable = True
        result.error = str(exc)
    except (ToolkitError, CommandFailed, OSError) as exc:
        result.failed = True
        result.error = str(exc)
    except Exception as exc:  # a bug must not stop the other hosts
        result.failed = True
        result.error = f"internal error: {type(exc).__name__}: {exc}"


class Engine:
    def __init__(
        self,
        site: Site,
        options: RunOptions,
        reporter,
        limit: str | None = None,
        become_password: str | None = None,
    ):
        self.site = site
        self.become_password = become_password or os.environ.get("TOOLKIT_BECOME_PASSWORD")
        self.options = options
        self.reporter = reporter
        self.limit = limit
        self.facts_cache = FactsCache()
        self.connections: dict[str, Connection] = {}
        self.fanout = Fanout()  # models and archives pass from host to host (toolkit/relay)

    def connection(self, host: Host) -> Connection:
        if host.unsupported:  # a docker/winrm/... host: refused when a play targets it
            raise HostUnreachable(host.unsupported)
        if host.name not in self.connections:
            conn = connect(
                host,
                host_key_policy=self.options.host_key_policy,
                become_password=self.become_password,
            )
            self.connections[host.name] = self.reporter.traced(host.name, conn)  # -vv, -vvv
        return self.connections[host.name]

    def run(self) -> list[HostResult]:
        results: list[HostResult] = []
        try:
            for play, hosts in self.site.targets(self.limit):
                self.reporter.play(play, hosts)
                with ThreadPoolExecutor(max_workers=max(1, self.options.forks)) as pool:
                    results += list(pool.map(lambda h, p=play: self.run_host(p, h), hosts))
        finally:
            self.fanout.close()
            for conn in self.connections.values():
                conn.close()
        return results

    # -- one host ------------------------------------------------------------------------

    def run_host(self, play: Play, host: Host) -> HostResult:
        result = HostResult(host.name, play.name, address=host.address)
        started = time.monotonic()
        with host_failure(result):
            play = self.site.play_for(play, host)  # its templated values rendered for this host
            conn = self.connection(host)
            self.converge(play, host, conn, result)
        result.seconds = time.monotonic() - started
        conn = self.connections.get(host.name)
        result.round_trips = conn.round_trips if conn else 0
        self.reporter.host_done(result)
        return result

    def probe(
        self,
        conn: Connection,
        data_dir: str | None,
        resources: list[Resource],
        verify_spec: str | None = None,
        play: Play | None = None,
    ):
        script = probe_script(data_dir, resources, self.options, verify_spec, play)
        output = conn.run(script, timeout=3600)
        if output.rc != 0 and MARK not in output.stdout and not output.stdout.strip():
            raise CommandFailed("reading facts", output)
        facts_text, observed = split_probe(output.stdout)
        return parse_facts(facts_text), observed

    def converge(self, play: Play, host: Host, conn: Connection, result: HostResult) -> None:
        variables = self.site.vars_for(play, host)
        data_dir = checked_data_dir(variables.get("toolkit_data_dir"))
        cached = self.facts_cache.load(host, data_dir)
        offline = is_offline(variables)

        def probe_for(design: HostDesign | None) -> tuple[Facts, dict[int, str]]:
            """One round trip: facts, the design's resources and, unless --check, health."""
            if design is None:
                return self.probe(conn, data_dir, [], None, play)
            verify = None if self.options.check else health_spec(design, 0)
            return self.probe(conn, data_dir, design.resources, verify, play)

        design = design_host(play, host, cached, offline=offline) if cached else None
        facts, observed = probe_for(design)
        if design is None or design_key(facts) != design_key(cached):
            design = design_host(play, host, facts, offline=offline)
            facts, observed = probe_for(design)
        self.facts_cache.save(host, data_dir, facts)
        checked_data_dir(facts.data_dir)  # also when it comes from $HOME
        check_service_values(design)
        result.facts, result.design = facts, design
        self.reporter.facts(host.name, facts, design)

        ctx = HostContext(
            host=host,
            play=play,
            conn=conn,
            facts=facts,
            data_dir=facts.data_dir,
            vars=variables,
            options=self.options,
            resolved={"pip": design.pip},
            progress=lambda label: self.reporter.progress(host.name, label),
            fanout=self.fanout,
        )
        changes, pending = plan_changes(design, observed, ctx)
        switching = switching_models(design, observed, pending)
        if switching:
            # the changed engines go to their other slot, beside or after the old ones
            fits = switch_fits(play.models, switching, facts, play.max_memory_gb)
            design = design_host(play, host, facts, switching, switch_mode(fits), offline=offline)
            facts, observed = probe_for(design)
            check_service_values(design)
            result.facts = ctx.facts = facts
            result.design = design
            changes, pending = plan_changes(design, observed, ctx)
        result.ok = len(design.resources) - len(changes)
        for change in changes:
            result.changes.append(change)
            self.reporter.change(host.name, change, planned=self.options.check)
        if result.changes:
            ctx.preflight = self.preflight(play, facts, result.changes)
            ctx.preflight()
        if self.options.check:
            return
        if not result.changes:
            probed = parse_health(observed.get(VERIFY, ""))
            if probed is not None and healthy(probed):
                result.verify = probed["verify"]
                return
        else:
            ctx.sh('mkdir -p "$TK_DATA"', "creating the data dir")
        for change in result.changes:
            self.reporter.step(host.name, change)
            started = time.monotonic()
            change.resource.apply(change, ctx)
            result.applied += 1
            self.reporter.step_done(host.name, change, time.monotonic() - started)
        # what services.json says now: the next run's first design needs no second probe
        facts.services = [s.name for s in design.services]
        self.facts_cache.save(host, data_dir, facts)
        if design.switch:
            result.switches = design.switch.outcome()
        self.verify(ctx, design, result)

    @staticmethod
    def preflight(play: Play, facts: Facts, changes: list[Change]):
        """Memory and disk checks of the host's models, with what is known of them now (their
        files' size and header once they are in the workstation's store)."""
        placing = [
            c.resource.model
            for c in changes
            if isinstance(c.resource, ModelFile) and c.data in ("place", "replace")
        ]

        def check() -> None:
            check_memory(play.models, facts, play.max_memory_gb)
            check_disk(placing, play.models, facts, play.max_disk_gb)

        return check

    def verify(self, ctx: HostContext, design: HostDesign, result: HostResult) -> None:
        """Wait on every service's health check, then one request per model via the proxy.

        While it waits, the manager's view of the services is watched too: a service that exits
        fails the host at once, with how it ended and the last lines of its log."""
        python = ctx.path("venv/bin/python")
        self.reporter.step_text(ctx.host.name, "waiting for services to be healthy, then verifying")
        spec = json.loads(health_spec(design))
        spec["watch"] = watch_spec(design, ctx.data_dir)
        out = ctx.conn.run(
            f"{quote(python)} {quote(ctx.path(HEALTH_CHECK_RELPATH))} {quote(json.dumps(spec))}",
            timeout=900,
        )
        report = parse_health(out.stdout)
        if report is None:
            raise CommandFailed("health check", out)
        result.verify = report.get("verify", {})
        logs = {s.name: design.manager.log_location(s, ctx.data_dir) for s in design.services}
        if report.get("failed"):
            raise ToolkitError(exited_message(report["failed"], logs))
        unhealthy = {url: code for url, code in report.get("health", {}).items() if code != 200}
        if unhealthy:
            names = {s.health_url: s.name for s in design.services}
            waiting = report.get("waiting", {})
            detail = ", ".join(
                waiting_text(names.get(u, u), code, waiting.get(names.get(u, u), {}))
                for u, code in unhealthy.items()
            )
            raise ToolkitError(
                f"not healthy after {spec['deadline_s']:g} s: {detail}; "
                f"logs: {', '.join(logs[n] for n in (names.get(u) for u in unhealthy) if n)}"
            )
        errors = {m: v["error"] for m, v in result.verify.items() if "error" in v}
        if errors:
            raise ToolkitError(
                "verification request failed: " + "; ".join(f"{m}: {e}" for m, e in errors.items())
            )


def plan_changes(
    design: HostDesign, observed: dict[int, str], ctx: HostContext
) -> tuple[list[Change], set[str]]:
    """Each resource's change, in order, and the ids of those changing."""
    pending: set[str] = set()
    changes = []
    for index, resource in enumerate(design.resources):
        change = resource.plan(observed.get(index, ""), ctx, pending)
        if change is not None:
            pending.add(resource.id)
            changes.append(change)
    return changes, pending


def switching_models(design: HostDesign, observed: dict[int, str], pending: set[str]) -> set[str]:
    """The models whose running engine this plan restarts, where a switch can keep them
    answering instead (toolkit/switch.py): a per-model engine behind a proxy that runs and
    stays up in this run."""
    if not design.slots or design.switch:
        return set()
    index, services = next(
        (i, r) for i, r in enumerate(design.resources) if isinstance(r, Services)
    )
    restarts = services.restarts(observed.get(index, ""), pending)
    running = services.manager.parse_status(observed.get(index, ""), services.services).running
    if PROXY_SERVICE not in running or PROXY_SERVICE in restarts:
        return set()
    return {name for name, slots in design.slots.items() if slots.live.service.name in restarts}


def watch_spec(design: HostDesign, data_dir: str) -> dict:
    """What health_check.py runs to see the services through their manager while it waits."""
    prefix = f"TK_DATA={quote(data_dir)}\n"
    names = " ".join(quote(s.name) for s in design.services)
    return {
        "script": prefix + design.manager.state_script(names),
        "services": {s.health_url: s.name for s in design.services if s.health_url},
        "tails": {
            s.name: prefix + design.manager.log_script(quote(s.name), EXIT_LOG_LINES)
            for s in design.services
        },
    }


EXIT_LOG_LINES = 20


def exited_message(failed: dict[str, dict], logs: dict[str, str]) -> str:
    """Which services exited while apply waited on them, how, and the end of their logs."""
    parts = []
    for name, seen in failed.items():
        how = seen.get("exit") or seen.get("state", "exited")
        restarts = seen.get("restarts", "")
        counted = (
            f", {restarts} restart{'' if restarts == '1' else 's'}" if restarts.isdigit() else ""
        )
        lines = seen.get("log", [])[-EXIT_LOG_LINES:]
        where = logs.get(name, "its log")
        text = f"{name} exited while apply waited on its health ({how}{counted})"
        if lines:
            text += f"\nlast {len(lines)} lines of {where}:\n" + "\n".join(
                f"  | {line}" for line in lines
            )
        else:
            text += f"; nothing in {where}"
        parts.append(text)
    return "\n".join(parts)


def waiting_text(name: str, code: int, seen: dict) -> str:
    state = "still loading" if code == 503 else "no answer" if not code else f"HTTP {code}"
    last = seen.get("log") or []
    return f"{name} ({state}" + (f"; last log line: {last[-1]}" if last else "") + ")"


def stop_all(
    site: Site,
    reporter,
    options: RunOptions,
    limit: str | None = None,
    become_password: str | None = None,
) -> list[HostResult]:
    """``toolkit down``: stop every service a play started on its hosts (hosts in parallel)."""
    engine = Engine(site, options, reporter, limit, become_password)

    def stop(play: Play, host: Host) -> HostResult:
        result = HostResult(host.name, play.name, address=host.address)
        with host_failure(result):
            conn = engine.connection(host)
            variables = site.vars_for(play, host)
            data_dir = checked_data_dir(variables.get("toolkit_data_dir"))
            host_play = site.play_for(play, host)
            facts, _ = engine.probe(conn, data_dir, [], play=host_play)
            design = design_host(host_play, host, facts, offline=is_offline(variables))
            # with the engine slots not in use: one a switch cut short may still run
            script = design.manager.stop_script([*design.services, *design.spares])
            conn.check(
                f"{PRELUDE}\n{data_dir_assignment(data_dir)}\n{script}",
                f"stopping services with {design.manager.name}",
                timeout=120,
            )
        reporter.host_done(result)
        return result

    results: list[HostResult] = []
    try:
        for play, hosts in site.targets(limit):
            reporter.play(play, hosts)
            with ThreadPoolExecutor(max_workers=max(1, options.forks)) as pool:
                results += list(pool.map(lambda h, p=play: stop(p, h), hosts))
    finally:
        for conn in engine.connections.values():
            conn.close()
    return results
