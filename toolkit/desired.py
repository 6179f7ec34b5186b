"""From a play and a host's facts to the ordered resources the host should have.

Order matters: the virtualenv and files first, models next, service definitions, and the
services last (they restart when any of their inputs changed in this run).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from toolkit.assets import proxy_dir
from toolkit.errors import ToolkitError
from toolkit.hosts.facts import Facts
from toolkit.inventory import Host
from toolkit.resources.base import HostContext, Resource
from toolkit.resources.files import File, Tree
from toolkit.resources.model import ModelFile, model_relpath
from toolkit.resources.runtime import Virtualenv
from toolkit.resources.service import Services
from toolkit.runtimes import llamacpp
from toolkit.services.definition import Service
from toolkit.services.manager import ServiceManager
from toolkit.services.supervisor import Supervisor
from toolkit.services.systemd import Systemd
from toolkit.services.termux import Termux
from toolkit.site import ModelSpec, Play
from toolkit.templates import render

HEALTH_CHECK = Path(__file__).with_name("services") / "health_check.py"
HEALTH_CHECK_RELPATH = "bin/health_check.py"
ROUTES_RELPATH = "proxy/routes.yml"


def service_name(model: ModelSpec) -> str:
    return "engine-" + re.sub(r"[^A-Za-z0-9-]", "-", model.name)


def choose_manager(play: Play, facts: Facts) -> ServiceManager:
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
        return Termux()
    if wanted == "systemd":
        return Systemd(system=facts.uid == 0 or not facts.systemd_user)
    if wanted == "systemd-user":
        return Systemd(system=False)
    return Supervisor()


@dataclass
class Endpoint:
    """A model as served on one host: the engine's port and the proxy in front of it."""

    model: ModelSpec
    port: int
    service: Service


@dataclass
class HostDesign:
    """What a host should run, decided from the play and the host's facts."""

    resources: list[Resource]
    endpoints: list[Endpoint]
    services: list[Service]
    manager: ServiceManager
    proxy_port: int | None
    resolved: dict


def design_host(play: Play, host: Host, facts: Facts) -> HostDesign:
    data = facts.data_dir
    if not data:
        raise ToolkitError("the host did not report its data dir (is $HOME set?)")
    resolved: dict = {"llamacpp_pip": []}
    install = None
    if "llamacpp" in play.runtimes:
        install = llamacpp.resolve_install(play.runtimes["llamacpp"], facts, data)
        resolved["llamacpp_pip"] = install.pip_requirements
        resolved["llamacpp"] = install.strategy
    unsupported = [m.name for m in play.models if m.runtime != "llamacpp"]
    if unsupported:
        raise ToolkitError(
            f"runtime of model(s) {', '.join(unsupported)} is not supported yet (llamacpp is)"
        )

    def copy(relpath: str, source: Path, mode: int = 0o644) -> File:
        return File(relpath, lambda ctx: source.read_bytes(), mode)

    code: list[File] = [copy(HEALTH_CHECK_RELPATH, HEALTH_CHECK)]
    if install is not None and install.strategy == "pip":
        code.append(copy(llamacpp.SHIM_RELPATH, llamacpp.SHIM))
    proxy_code = Tree(
        "app/proxy",
        {
            path.name: path.read_bytes()
            for path in proxy_dir().iterdir()
            if path.suffix == ".py" or path.name == "requirements.txt"
        },
    )
    # Models first: a wrong checksum or an unreachable source fails the host before any install.
    model_files = [ModelFile(model) for model in play.models]
    resources: list[Resource] = [*model_files, Virtualenv(), *code, proxy_code]

    base_port = play.proxy.port + 1 if play.proxy else 8081
    endpoints, services = [], []
    taken = {play.proxy.port} if play.proxy else set()
    for model, model_file in zip(play.models, model_files, strict=True):
        port = model.port or base_port
        while port in taken:
            port += 1
        taken.add(port)
        service = Service(
            name=service_name(model),
            description=f"llama.cpp serving {model.name}",
            argv=llamacpp.server_argv(install, model, f"{data}/{model_relpath(model)}", port),
            workdir=data,
            health_url=f"http://127.0.0.1:{port}{llamacpp.HEALTH_PATH}",
            inputs=[model_file.id, "runtime:venv"] + [c.id for c in code if "xllamacpp" in c.id],
        )
        endpoints.append(Endpoint(model, port, service))
        services.append(service)

    if play.proxy:
        resources.append(
            File(ROUTES_RELPATH, lambda ctx: render_routes(ctx, endpoints, play).encode())
        )
        services.append(
            Service(
                name="proxy",
                description=f"OpenAI proxy on {play.proxy.host}:{play.proxy.port}",
                argv=[
                    f"{data}/venv/bin/python",
                    "-m",
                    "proxy",
                    "--routes",
                    f"{data}/{ROUTES_RELPATH}",
                    "--host",
                    play.proxy.host,
                    "--port",
                    str(play.proxy.port),
                    "--workers",
                    str(play.proxy.workers),
                ],  # fmt: skip
                workdir=f"{data}/app",
                env={"PYTHONPATH": f"{data}/app", "PYTHONUNBUFFERED": "1"},
                health_url=f"http://127.0.0.1:{play.proxy.port}/health",
                inputs=["runtime:venv", proxy_code.id],
            )
        )

    manager = choose_manager(play, facts)
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
    resources += definition_files
    resources.append(Services(manager, services, {f.id for f in definition_files}))
    return HostDesign(
        resources, endpoints, services, manager, play.proxy.port if play.proxy else None, resolved
    )


def render_routes(ctx: HostContext, endpoints: list[Endpoint], play: Play) -> str:
    routes = []
    for endpoint in endpoints:
        args = endpoint.model.args
        capabilities = {}
        if "ctx_size" in args:  # llama.cpp splits the context between its parallel slots
            capabilities["max_context"] = args["ctx_size"] // max(1, args.get("parallel", 1))
        routes.append(
            {
                "name": endpoint.model.name,
                "aliases": endpoint.model.aliases,
                "backends": [{"url": f"http://127.0.0.1:{endpoint.port}", "runtime": "llamacpp"}],
                "capabilities": capabilities,
            }
        )
    return render(
        "routes.yml.j2",
        host=ctx.host.name,
        routes=routes,
        keys_file=play.proxy.keys_file if play.proxy else None,
    )


def health_spec(design: HostDesign, deadline_s: float = 300) -> str:
    """Input of health_check.py: the URLs to wait on, then one chat request per model."""
    spec = {
        "urls": [s.health_url for s in design.services if s.health_url],
        "deadline_s": deadline_s,
    }
    if design.proxy_port:
        spec["verify"] = [
            {
                "url": f"http://127.0.0.1:{design.proxy_port}/v1/chat/completions",
                "model": endpoint.model.name,
            }
            for endpoint in design.endpoints
        ]
    return json.dumps(spec)
