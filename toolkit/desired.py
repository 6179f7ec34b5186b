"""From a play and a host's facts to the ordered resources the host should have.

Order matters: the virtualenv and files first, models next, service definitions, and the
services last (they restart when any of their inputs changed in this run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from toolkit.assets import proxy_dir
from toolkit.credentials import TlsPair, keys_file_content, tls_pair
from toolkit.errors import ToolkitError
from toolkit.hosts.facts import Facts
from toolkit.inventory import Host
from toolkit.offline import OfflineRefused
from toolkit.resources.base import HostContext, Resource
from toolkit.resources.files import File, Tree
from toolkit.resources.model import ModelFile
from toolkit.resources.packages import Packages, merged
from toolkit.resources.runtime import Virtualenv
from toolkit.resources.service import Services
from toolkit.runtimes import RUNTIMES
from toolkit.runtimes.base import Install, Ports, Served
from toolkit.services import manifest
from toolkit.services.definition import Service
from toolkit.services.manager import ServiceManager
from toolkit.services.supervisor import Supervisor
from toolkit.services.systemd import Systemd
from toolkit.services.termux import DEFAULT_PREFIX, Termux
from toolkit.site import Play
from toolkit.switch import DRAIN_RELPATH, Slots, Switch, alternate_name, live_slot, order
from toolkit.templates import render

HEALTH_CHECK = Path(__file__).with_name("services") / "health_check.py"
HEALTH_CHECK_RELPATH = "bin/health_check.py"
DRAIN_CHECK = Path(__file__).with_name("services") / "drain_check.py"
ROUTES_RELPATH = "proxy/routes.yml"
KEYS_RELPATH = "proxy/api-keys"
TLS_CERT_RELPATH = "proxy/tls/cert.pem"
TLS_KEY_RELPATH = "proxy/tls/key.pem"
PROXY_SERVICE = "proxy"


def choose_manager(play: Play, facts: Facts, host: Host | None = None) -> ServiceManager:
    wanted = play.service_manager
    if wanted == "auto":
        if facts.termux:
            wanted = "termux"
        elif facts.systemd_system and facts.uid == 0:
            wanted = "systemd"
        elif facts.systemd_user:
            wanted = "systemd-user"
        else:
            wanted = "supervisor"
    if wanted == "termux":
        wake_lock = bool(host and host.vars.get("termux_wake_lock"))
        return Termux(facts.prefix or DEFAULT_PREFIX, wake_lock=wake_lock)
    if wanted == "systemd":
        return Systemd(system=facts.uid == 0 or not facts.systemd_user)
    if wanted == "systemd-user":
        return Systemd(system=False)
    return Supervisor()


@dataclass
class HostDesign:
    """What a host should run, decided from the play and the host's facts."""

    resources: list[Resource]
    served: list[Served]  # one per model, in the play's order
    services: list[Service]
    manager: ServiceManager
    proxy_port: int | None
    installs: dict[str, Install]  # runtime name -> how it is installed here
    notices: list[str] = field(default_factory=list)  # for the recap: certificates, warnings
    proxy_scheme: str = "http"  # https when the proxy has a certificate
    keys_file: str | None = None  # the proxy's keys file on the host, when it has keys
    offline: bool = False  # nothing on the host reaches the internet (toolkit/offline.py)
    slots: dict[str, Slots] = field(default_factory=dict)  # switchable models' engine slots
    switch: Switch | None = None  # the models switching to a new engine in this run

    @property
    def spares(self) -> list[Service]:
        """The engine slots not in use: ``down`` stops them too (a switch cut short)."""
        return [s.spare.service for s in self.slots.values()]

    @property
    def pip(self) -> list[str]:
        return sorted({r for install in self.installs.values() for r in install.pip})


def copied(relpath: str, source: Path, mode: int = 0o644) -> File:
    return File(relpath, lambda ctx: source.read_bytes(), mode)


def design_host(
    play: Play,
    host: Host,
    facts: Facts,
    switching: set[str] | None = None,
    mode: str = "",
    *,
    offline: bool = False,
) -> HostDesign:
    """``switching``: models whose engine moves to its other slot in this run, the ``mode`` of
    toolkit/switch.py; without it every model stays in the slot the host has it in.
    ``offline``: the host has no internet (``toolkit/offline.py``); what would need it is
    refused here, before anything runs on the host."""
    data = facts.data_dir
    if not data:
        raise ToolkitError("the host did not report its data dir (is $HOME set?)")
    try:
        installs = {
            name: RUNTIMES[name].resolve(spec, facts, data, offline=offline)
            for name, spec in play.runtimes.items()
        }
    except OfflineRefused as exc:
        raise OfflineRefused(f"host {host.name} is offline: {exc}") from None
    placed: dict[str, ModelFile] = {
        model.name: ModelFile(model)
        for model in play.models
        if RUNTIMES[model.runtime].needs_file(model)
    }
    proxy_code = Tree(
        "app/proxy",
        {
            path.name: path.read_bytes()
            for path in proxy_dir().iterdir()
            if path.suffix == ".py" or path.name == "requirements.txt"
        },
    )
    manager = choose_manager(play, facts, host)
    # Models first: a wrong checksum or an unreachable source fails the host before any install.
    resources: list[Resource] = [*placed.values()]
    if manager.package_manager and manager.packages:
        resources.append(Packages(manager.package_manager, list(manager.packages)))
    for install in installs.values():
        resources += install.resources
    resources = merged(resources)  # one install command per package manager
    resources += [
        Virtualenv(),
        copied(HEALTH_CHECK_RELPATH, HEALTH_CHECK),
        copied(DRAIN_RELPATH, DRAIN_CHECK),
    ]
    for install in installs.values():
        resources += install.files
    resources.append(proxy_code)

    taken = {m.port for m in play.models if m.port} | ({play.proxy.port} if play.proxy else set())
    ports = Ports(play.proxy.port + 1 if play.proxy else 8081, taken)
    served: dict[str, Served] = {}
    after_start: list[Resource] = []  # what needs the runtime's service up (imports, pulls)
    for name, install in installs.items():
        runtime = RUNTIMES[name]
        mine = [(m, placed.get(m.name)) for m in play.models if m.runtime == name]
        for model, file in mine:
            try:
                after_start += runtime.model_resources(install, model, file, data)
            except OfflineRefused as exc:
                raise OfflineRefused(f"host {host.name} is offline: {exc}") from None
        # A service restarts when its install or toolkit's virtualenv changes; which model
        # files it reads (an engine serving one file does; a daemon importing them does not),
        # its runtime says in serve().
        for item in runtime.serve(install, mine, ports, data):
            for input_id in [*install.inputs, "runtime:venv"] if item.service else []:
                if input_id not in item.service.inputs:
                    item.service.inputs.append(input_id)
            served[item.model.name] = item
    slots = engine_slots(play, placed, installs, served, ports, data, facts.services, switching)
    for name, pair in slots.items():
        served[name] = pair.wanted
    ordered = [served[m.name] for m in play.models]
    # a daemon toolkit adopted (service None) is neither defined, started nor stopped here
    services = list({i.service.name: i.service for i in ordered if i.service}.values())

    notices: list[str] = []
    keys_file = None
    if play.proxy:
        # the certificate is read (or made) once: the files and the recap's notice share it
        pair = (
            tls_pair(play.proxy.tls, host.name, host.address or host.name)
            if play.proxy.tls
            else None
        )
        proxy_resources, proxy_service, keys_file = design_proxy(
            play, host, data, ordered, proxy_code, pair
        )
        resources += proxy_resources
        services.append(proxy_service)
        notices += proxy_notices(play, pair)

    definitions = manager.definitions(services, data, host.name)
    definition_files = [
        File(d.relpath, lambda ctx, d=d: render(d.template, **d.variables).encode(), d.mode)
        for d in definitions
    ]
    by_name = {s.name: s for s in services}
    for definition, file in zip(definitions, definition_files, strict=True):
        owner = definition.variables.get("service")
        if owner is not None:
            by_name[owner.name].inputs.append(file.id)
    manifest_file = next(f for f in definition_files if f.relpath == manifest.RELPATH)
    resources += [f for f in definition_files if f is not manifest_file]
    services_resource = Services(manager, services, {f.id for f in definition_files})
    switch = None
    moving = {name: pair for name, pair in slots.items() if pair.switching}
    if moving and play.proxy:
        switch = Switch(
            mode,
            moving,
            {n: (RUNTIMES[p.wanted.model.runtime].metrics_path,
                 RUNTIMES[p.wanted.model.runtime].in_flight_gauges) for n, p in moving.items()},
            manager,
            f"{'https' if play.proxy.tls else 'http'}://127.0.0.1:{play.proxy.port}/metrics",
            keys_file,
        )  # fmt: skip
        routes = next(r for r in resources if getattr(r, "relpath", "") == ROUTES_RELPATH)
        resources.remove(routes)
        resources = order(resources, routes, manifest_file, switch, services_resource)
    else:
        resources += [services_resource, manifest_file]
    resources += after_start
    return HostDesign(
        resources,
        ordered,
        services,
        manager,
        play.proxy.port if play.proxy else None,
        installs,
        notices,
        "https" if play.proxy and play.proxy.tls else "http",
        keys_file,
        offline,
        slots,
        switch,
    )


def engine_slots(
    play: Play,
    placed: dict[str, ModelFile],
    installs: dict[str, Install],
    served: dict[str, Served],
    ports: Ports,
    data: str,
    applied: list[str],
    switching: set[str] | None,
) -> dict[str, Slots]:
    """The two engine slots of each model a switch can move (toolkit/switch.py): the primary
    its runtime served, and an alternate on a port of its own, taken after every primary's so
    both stay where they are from one run to the next. Behind a proxy only: without one,
    clients call the engine's port, which must not move."""
    if not play.proxy:
        return {}
    slots: dict[str, Slots] = {}
    names = {item.service.name for item in served.values() if item.service}
    for model in play.models:
        runtime = RUNTIMES[model.runtime]
        if not runtime.in_flight_gauges:
            continue
        primary, install = served[model.name], installs[model.runtime]
        port = ports.take()
        moved = replace(model, port=port)
        [alternate] = runtime.serve(install, [(moved, placed.get(model.name))], Ports(port, set()),
                                    data)  # fmt: skip
        alternate.model = replace(alternate.model, port=model.port)
        alternate.service.name = alternate_name(primary.service.name)
        if alternate.service.name in names:
            raise ToolkitError(
                f"model {model.name}: its alternate engine would be called "
                f"{alternate.service.name}, the name of another model's engine; rename one model"
            )
        alternate.service.inputs = list(dict.fromkeys(
            [*alternate.service.inputs, *install.inputs, "runtime:venv"]))  # fmt: skip
        pair = (primary, alternate)
        live = live_slot(primary.service.name, applied)
        wanted = 1 - live if switching and model.name in switching else live
        slots[model.name] = Slots(pair[live], pair[wanted], pair[1 - wanted])
    return slots


def design_proxy(
    play: Play, host: Host, data: str, served: list[Served], code: Tree, pair: TlsPair | None
) -> tuple[list[Resource], Service, str | None]:
    """The proxy's files (routes, delivered keys, TLS certificate), its service, and where its
    keys file is on the host."""
    proxy = play.proxy
    assert proxy is not None
    files: list[File] = []
    keys_file = proxy.keys_file
    if proxy.keys:
        keys = proxy.keys
        files.append(
            File(KEYS_RELPATH, lambda ctx: keys_file_content(keys, host.name), 0o600, secret=True)
        )
        keys_file = f"{data}/{KEYS_RELPATH}"
    tls = None
    if pair is not None:
        files.append(File(TLS_CERT_RELPATH, lambda ctx: pair.cert))
        files.append(File(TLS_KEY_RELPATH, lambda ctx: pair.key, 0o600, secret=True))
        tls = {"cert": f"{data}/{TLS_CERT_RELPATH}", "key": f"{data}/{TLS_KEY_RELPATH}"}
    routes = File(ROUTES_RELPATH, lambda ctx: render_routes(ctx, served, keys_file, tls).encode())
    scheme = "https" if tls else "http"
    argv = [
        f"{data}/venv/bin/python", "-m", "proxy", "--routes", f"{data}/{ROUTES_RELPATH}",
        "--host", proxy.host, "--port", str(proxy.port), "--workers", str(proxy.workers),
    ]  # fmt: skip
    if proxy.server != "builtin":
        argv += ["--server", proxy.server]
    service = Service(
        name=PROXY_SERVICE,
        description=f"OpenAI proxy on {proxy.host}:{proxy.port}",
        argv=argv,
        workdir=f"{data}/app",
        env={"PYTHONPATH": f"{data}/app", "PYTHONUNBUFFERED": "1"},
        health_url=f"{scheme}://127.0.0.1:{proxy.port}/health",
        # keys reload by themselves; a certificate is read at start only
        inputs=["runtime:venv", code.id] + [f.id for f in files if f.relpath != KEYS_RELPATH],
    )
    return [*files, routes], service, keys_file


def proxy_notices(play: Play, pair: TlsPair | None) -> list[str]:
    """What the recap should say of this host's proxy (never a key itself)."""
    proxy = play.proxy
    assert proxy is not None
    notices = []
    if pair is not None:
        trust = f"; clients trust {pair.ca_file}" if pair.ca_file else ""
        notices.append(f"proxy TLS certificate SHA-256 {pair.fingerprint}{trust}")
    keyed = proxy.keys or proxy.keys_file
    if keyed and not proxy.tls and proxy.host not in ("127.0.0.1", "localhost", "::1"):
        notices.append(
            f"warning: the proxy listens on {proxy.host} with API keys but without TLS: keys "
            "travel in clear text (set proxy.tls)"
        )
    return notices


def render_routes(
    ctx: HostContext, served: list[Served], keys_file: str | None = None, tls: dict | None = None
) -> str:
    return render("routes.yml.j2", **routes_variables(ctx.host.name, served, keys_file, tls))


def routes_variables(
    host: str, served: list[Served], keys_file: str | None = None, tls: dict | None = None
) -> dict:
    """The routes template's variables (bench/fleet.py hands the same to Ansible)."""
    routes = [
        {
            "name": item.model.name,
            "aliases": item.model.aliases,
            "backends": [item.backend],
            "capabilities": RUNTIMES[item.model.runtime].capabilities(item.model),
        }
        for item in served
    ]
    return {"host": host, "routes": routes, "keys_file": keys_file, "tls": tls}


def health_spec(design: HostDesign, deadline_s: float = 300) -> str:
    """Input of health_check.py: the URLs to wait on (toolkit's services and the daemons it
    adopted), then one request per model, of the kind its runtime says proves it (chat,
    completion or embedding)."""
    urls = [s.health_url for s in design.services if s.health_url]
    urls += [i.health_url for i in design.served if i.service is None and i.health_url]
    spec = {
        "urls": list(dict.fromkeys(urls)),  # an adopted daemon serving two models: checked once
        "deadline_s": deadline_s,
        "keys_file": design.keys_file,
    }
    if design.proxy_port:
        spec["verify"] = [
            {"url": f"{design.proxy_scheme}://127.0.0.1:{design.proxy_port}/v1",
             "model": item.model.name,
             "kind": item.verify}
            for item in design.served
        ]  # fmt: skip
    return json.dumps(spec)
