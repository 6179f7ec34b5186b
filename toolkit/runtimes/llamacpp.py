"""llama.cpp: how it is installed on a host and how its server is started for a model.

Strategies: ``present`` uses a ``llama-server`` already there (on PATH or at ``path:``); ``pip``
puts the prebuilt ``xllamacpp`` wheel (llama.cpp's own server, compiled) into toolkit's
virtualenv and starts it through ``xllamacpp_server.py``, which takes llama-server's flags.
``auto`` picks ``present`` when a llama-server is found, else ``pip``.

One ``llama-server`` per model, on its own port; health on ``/health`` (503 while loading).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import ToolkitError
from toolkit.models.gguf import system_role_supported
from toolkit.models.metadata import model_info
from toolkit.resources.files import File
from toolkit.runtimes.base import Install, Ports, Runtime, Served
from toolkit.schema import Key
from toolkit.services.definition import Service

if TYPE_CHECKING:
    from toolkit.hosts.facts import Facts
    from toolkit.positions import PosDict
    from toolkit.resources.model import ModelFile
    from toolkit.site import ModelSpec, RuntimeSpec

SHIM = Path(__file__).with_name("xllamacpp_server.py")
SHIM_RELPATH = "bin/xllamacpp_server.py"
HEALTH_PATH = "/health"  # 503 while loading, 200 when ready
SERVER = "llama-server"


def engine_service_name(model: ModelSpec) -> str:
    return "engine-" + re.sub(r"[^A-Za-z0-9-]", "-", model.name)


class LlamaCpp(Runtime):
    name = "llamacpp"
    label = "llama.cpp"
    strategies = ("auto", "present", "pip", "package", "release", "source")
    implemented = ("auto", "present", "pip")
    keys = {"path": Key((str,))}
    args = {
        "ctx_size": Key((int,)),
        "parallel": Key((int,)),
        "n_gpu_layers": Key((int,)),
        "threads": Key((int,)),
        "chat_template": Key((str,)),
        "jinja": Key((bool,)),
        "embedding": Key((bool,)),
        "pooling": Key((str,), choices=("none", "mean", "cls", "last", "rank")),
        "extra": Key((list,)),
    }
    binaries = (SERVER,)
    # smallest value of each numeric arg (ctx_size 0: the model's own trained context)
    minimums = {"ctx_size": 0, "parallel": 1, "threads": 1, "n_gpu_layers": -1}

    def check_model(self, model: ModelSpec, conf: PosDict) -> None:
        args = conf.get("args") or {}
        for key, least in self.minimums.items():
            if key in args and args[key] < least:
                raise args.vpos_of(key).error(
                    f'{key} of model "{model.name}" must be at least {least}, got {args[key]}'
                )
        info = model_info(model.sha256)
        trained = info.context_length if info else None
        if trained and args.get("ctx_size", 0) > trained:
            raise args.vpos_of("ctx_size").error(
                f'ctx_size of model "{model.name}" is {args["ctx_size"]}, beyond the '
                f"{trained} tokens it was trained for (its GGUF says so); use at most {trained}"
            )

    def resolve(self, spec: RuntimeSpec, facts: Facts, data_dir: str) -> Install:
        found = spec.conf.get("path") or facts.binaries.get(SERVER)
        if spec.install == "present" or (spec.install == "auto" and found):
            if not found:
                raise ToolkitError(
                    "llama.cpp install: present, but no llama-server on PATH; set "
                    "runtimes.llamacpp.path or use install: pip"
                )
            where = "at path:" if spec.conf.get("path") else "on PATH"
            return Install("present", f"llama-server {where} {found}", details={"server": [found]})
        if spec.install in ("pip", "auto"):
            why = "no llama-server found" if spec.install == "auto" else "asked for"
            shim = File(SHIM_RELPATH, lambda ctx: SHIM.read_bytes())
            return Install(
                "pip",
                f"xllamacpp wheel in toolkit's virtualenv ({why})",
                pip=["xllamacpp"],
                files=[shim],
                details={"server": [f"{data_dir}/venv/bin/python", f"{data_dir}/{SHIM_RELPATH}"]},
            )
        raise ToolkitError(f"llama.cpp install strategy {spec.install!r} is not supported yet")

    def capabilities(self, model: ModelSpec) -> dict:
        return model_capabilities(model)

    def serve(self, install, models, ports: Ports, data_dir: str) -> list[Served]:
        served = []
        for model, placed in models:
            port = ports.take(model.port)
            service = Service(
                name=engine_service_name(model),
                description=f"llama.cpp serving {model.name}",
                argv=server_argv(install.details["server"], model, _path(placed, data_dir), port),
                workdir=data_dir,
                health_url=f"http://127.0.0.1:{port}{HEALTH_PATH}",
            )
            served.append(
                Served(
                    model,
                    port,
                    service,
                    backend={"url": f"http://127.0.0.1:{port}", "runtime": self.name},
                    verify="embedding" if model.args.get("embedding") else "chat",
                )
            )
        return served


def _path(placed: ModelFile | None, data_dir: str) -> str:
    assert placed is not None, "llama.cpp serves files toolkit placed"
    return f"{data_dir}/{placed.relpath}"


def model_capabilities(model: ModelSpec) -> dict:
    """What the proxy should know of the model: the context a request may fill (llama.cpp
    splits ``ctx_size`` between its parallel slots; 0 or unset means the GGUF's trained
    context), and whether the chat template keeps a system message (else the proxy folds it
    into the first user turn). From the GGUF header once the file is in the workstation's store.
    """
    args, info = model.args, model_info(model.sha256)
    found: dict = {}
    context = args.get("ctx_size") or (info.context_length if info else None)
    if context:
        found["max_context"] = context // max(1, args.get("parallel", 1))
    template = args.get("chat_template")
    if template is None:
        known, template = info is not None, info.chat_template if info else None
    else:  # a built-in template name: llama.cpp folds system text itself
        known = "{" in template
    if known and not system_role_supported(template):
        found["system_role"] = False
    return found


def server_argv(server: list[str], model: ModelSpec, model_path: str, port: int) -> list[str]:
    """llama-server's command line for one model; every playbook arg maps to one flag."""
    args = model.args
    argv = [*server, "-m", model_path, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--alias", model.name]
    if "ctx_size" in args:
        argv += ["-c", str(args["ctx_size"])]
    if "parallel" in args:
        argv += ["-np", str(args["parallel"])]
    if "n_gpu_layers" in args:
        argv += ["-ngl", str(args["n_gpu_layers"])]
    if "threads" in args:
        argv += ["-t", str(args["threads"])]
    if args.get("jinja"):
        argv.append("--jinja")
    if "chat_template" in args:
        argv += ["--chat-template", args["chat_template"]]
    if args.get("embedding"):
        # OpenAI clients expect one vector per input: llama.cpp's default pooling for a
        # generative model gives none, so embeddings need a pooling type (mean unless set).
        argv += ["--embedding", "--pooling", args.get("pooling", "mean")]
    elif "pooling" in args:
        argv += ["--pooling", args["pooling"]]
    argv.append("--metrics")
    argv += [str(a) for a in args.get("extra", [])]
    return argv
