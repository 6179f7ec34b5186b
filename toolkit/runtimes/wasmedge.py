"""WasmEdge + LlamaEdge: ``llama-api-server.wasm`` run by WasmEdge's wasi_nn-ggml plugin.

Install strategies:

- ``release``: the WasmEdge runtime and its ``wasi_nn-ggml`` plugin **of the same version** (the
  runtime does not load a plugin of another API version: ``--nn-preload`` is then an unknown
  option), laid out as WasmEdge's installer does (``bin/ lib/ include/ plugin/``) under the data
  dir, checked against the release's ``SHA256SUM`` (or ``sha256:`` / ``plugin_sha256:``);
- ``present``: a ``wasmedge`` already on the host (on PATH or at ``path:``), its plugin where
  that install keeps it. The facts probe asks that ``wasmedge --help`` (with the plugin path the
  services get) whether ``--nn-preload`` is an option: WasmEdge adds it when the wasi_nn plugin
  loads, and loads none of another version; a host where it does not load fails before anything
  is changed, with WasmEdge's version, its own words on the plugin, and the fix;
- ``auto``: present when found, else release.

Either way ``llama-api-server.wasm`` is pinned by ``llamaedge_version:`` and checked against
LlamaEdge's ``SHA256SUM`` (or ``llamaedge_sha256:``). ``mirror:`` replaces https://github.com in
every URL. One service per model::

    wasmedge --dir .:. --nn-preload default:GGML:AUTO:<model.gguf> llama-api-server.wasm
      --model-name <name> --prompt-template <t> --ctx-size <n> --socket-addr 127.0.0.1:<port>

(``--port`` alone binds every address: never used). The prompt template comes from the
playbook, or is chosen from the GGUF's chat template (``prompt_templates.py``). Health is
``/v1/models``: LlamaEdge has no ``/health``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from toolkit.errors import ToolkitError, did_you_mean
from toolkit.hosts.connection import quote
from toolkit.resources.archive import Archive, Release
from toolkit.resources.base import Change, HostContext
from toolkit.runtimes import prompt_templates
from toolkit.runtimes.base import Install, Ports, Runtime, Served
from toolkit.runtimes.release_file import ReleaseFile
from toolkit.schema import Key
from toolkit.services.definition import Service

if TYPE_CHECKING:
    from toolkit.hosts.facts import Facts
    from toolkit.positions import PosDict
    from toolkit.resources.model import ModelFile
    from toolkit.site import ModelSpec, RuntimeSpec

DEFAULT_VERSION = "0.14.1"  # LlamaEdge's CI runs on WasmEdge 0.14.1 and 0.15.0
DEFAULT_LLAMAEDGE_VERSION = "0.28.1"
GITHUB = "https://github.com"
PLATFORMS = {  # WasmEdge's asset platform; its CI builds wasi_nn-ggml for these
    "x86_64": "ubuntu20.04_x86_64",
    "amd64": "ubuntu20.04_x86_64",
    "aarch64": "manylinux_2_28_aarch64",
    "arm64": "manylinux_2_28_aarch64",
}
PLUGIN_FILE = "libwasmedgePluginWasiNN.so"
HEALTH_PATH = "/v1/models"
DEFAULT_CTX_SIZE = 4096


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("-")[0])[:3])


class PluginArchive(Archive):
    """The wasi_nn plugin, unpacked into the runtime's ``plugin/`` folder: unpacked again
    whenever the runtime is (unpacking the runtime replaces its whole folder)."""

    def __init__(self, release: Release, dest: str, runtime: Archive):
        super().__init__(release, dest)
        self.runtime = runtime

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        if self.runtime.id in pending:
            return Change(self, f"download and unpack {self.release.filename}")
        return super().plan(observed, ctx, pending)


class WasmEdge(Runtime):
    name = "wasmedge"
    label = "WasmEdge+LlamaEdge"
    strategies = ("auto", "present", "release")
    keys = {
        "version": Key((str,)),  # WasmEdge and its plugin (default DEFAULT_VERSION)
        "llamaedge_version": Key((str,)),  # llama-api-server.wasm (default 0.28.1)
        "sha256": Key((str,)),  # the runtime archive's digest, instead of SHA256SUM
        "plugin_sha256": Key((str,)),  # the wasi_nn-ggml plugin archive's digest
        "llamaedge_sha256": Key((str,)),  # llama-api-server.wasm's digest
        "mirror": Key((str,)),  # replaces https://github.com in download URLs
        "path": Key((str,)),  # present: the wasmedge binary
    }
    args = {
        "prompt_template": Key((str,)),  # LlamaEdge's name; chosen from the GGUF when absent
        "ctx_size": Key((int,)),
        "batch_size": Key((int,)),
        "n_gpu_layers": Key((int,)),
        "threads": Key((int,)),
        "extra": Key((list,)),  # more llama-api-server flags, as they are
    }
    binaries = ("wasmedge",)

    # -- playbook ----------------------------------------------------------------------------

    def check_model(self, model: ModelSpec, conf: PosDict) -> None:
        template = model.args.get("prompt_template")
        if template is not None and template not in prompt_templates.LLAMAEDGE_TEMPLATES:
            args = conf.get("args")
            at = args.vpos_of("prompt_template") if hasattr(args, "vpos_of") else conf.pos
            raise at.error(
                f'prompt_template "{template}" is not one LlamaEdge has'
                + (did_you_mean(template, prompt_templates.LLAMAEDGE_TEMPLATES) or "")
                + "; see llama-api-server --help for the list"
            )
        for flag in ("--port", "--socket-addr"):
            if flag in [str(a) for a in model.args.get("extra", [])]:
                raise (
                    conf.get("args")
                    .vpos_of("extra")
                    .error(f"{flag} is set by toolkit (127.0.0.1 and the model's port); remove it")
                )

    # -- install -----------------------------------------------------------------------------

    def facts_probe(self, spec: RuntimeSpec) -> str:
        """For ``present``: the found wasmedge's version and whether its wasi_nn plugin loads
        (``probed_wasmedge_wasi_nn``: ``loaded``, or ``missing`` and WasmEdge's error line)."""
        if spec.install not in ("auto", "present"):
            return ""
        path = spec.conf.get("path")
        found = quote(path) if path else "$(command -v wasmedge 2>/dev/null)"
        return f"""tk_we={found}
if [ -n "$tk_we" ] && [ -x "$tk_we" ]; then
  tk_wp=${{tk_we%/*}}; tk_wp=${{tk_wp%/*}}
  tk_fact probed_wasmedge_version "$("$tk_we" --version 2>&1 | tail -n 1)"
  tk_wh=$(WASMEDGE_PLUGIN_PATH="$tk_wp/plugin" LD_LIBRARY_PATH="$tk_wp/lib" "$tk_we" --help 2>&1)
  case $tk_wh in
    *--nn-preload*) tk_fact probed_wasmedge_wasi_nn loaded ;;
    *) tk_fact probed_wasmedge_wasi_nn "missing $(printf '%s\n' "$tk_wh" | grep -i -m 1 plugin)" ;;
  esac
fi"""

    def _check_plugin(self, found: str, plugin_dir: str, facts: Facts) -> None:
        """Refuse a found WasmEdge whose wasi_nn plugin does not load: every model's service
        would exit at once with ``unknown option: nn-preload``."""
        state, _, said = facts.probed.get("wasmedge_wasi_nn", "").partition(" ")
        if state != "missing":
            return
        version = facts.probed.get("wasmedge_version") or "of unknown version"
        said = said.strip() or f"no {PLUGIN_FILE} in {plugin_dir}"
        raise ToolkitError(
            f"WasmEdge install: present, but the {version} at {found} does not load its wasi_nn "
            f"plugin from {plugin_dir} (WasmEdge says: {said}), so --nn-preload would be an "
            f"unknown option: put the wasi_nn-ggml plugin of that same WasmEdge version "
            f"(WasmEdge-plugin-wasi_nn-ggml-<version>-<platform>.tar.gz) in {plugin_dir}, or "
            "use install: release (runtime and plugin of one version)"
        )

    def resolve(
        self, spec: RuntimeSpec, facts: Facts, data_dir: str, offline: bool = False
    ) -> Install:
        """Every strategy works offline: the release archives and llama-api-server.wasm are
        fetched by the workstation and placed."""
        conf = spec.conf
        found = conf.get("path") or facts.binaries.get("wasmedge")
        strategy = spec.install
        if strategy == "auto":
            strategy = "present" if found else "release"
        mirror = (conf.get("mirror") or GITHUB).rstrip("/")
        hint = (
            f"fix runtimes.wasmedge.mirror ({mirror})"
            if conf.get("mirror")
            else "set runtimes.wasmedge.mirror to a server that holds these releases"
        )
        install = Install(strategy)
        if strategy == "present":
            if not found:
                raise ToolkitError(
                    "WasmEdge install: present, but no wasmedge on PATH; set "
                    "runtimes.wasmedge.path or use install: release"
                )
            prefix = found.rsplit("/", 2)[0] if found.count("/") >= 2 else ""
            install.reason = f"wasmedge found at {found}"
            self._check_plugin(found, f"{prefix}/plugin", facts)
            install.details.update(
                wasmedge=found, plugin_dir=f"{prefix}/plugin", lib_dir=f"{prefix}/lib"
            )
        else:
            version = conf.get("version") or DEFAULT_VERSION
            platform = PLATFORMS.get(facts.arch)
            if platform is None or facts.os not in ("Linux", ""):
                raise ToolkitError(
                    f"WasmEdge install: release has Linux x86_64 and aarch64 builds of the "
                    f"wasi_nn-ggml plugin; this host is {facts.os} {facts.arch}"
                )
            folder = f"{mirror}/WasmEdge/WasmEdge/releases/download/{version}"
            sums = f"{folder}/SHA256SUM"
            dest = f"runtimes/wasmedge-{version}"
            runtime = Archive(
                Release(
                    f"{folder}/WasmEdge-{version}-{platform}.tar.gz",
                    conf.get("sha256"),
                    None if conf.get("sha256") else sums,
                    hint,
                ),
                dest,
                strip=0 if version_tuple(version) >= (0, 15) else 1,  # WasmEdge-<v>-Linux/
            )
            plugin = PluginArchive(
                Release(
                    f"{folder}/WasmEdge-plugin-wasi_nn-ggml-{version}-{platform}.tar.gz",
                    conf.get("plugin_sha256"),
                    None if conf.get("plugin_sha256") else sums,
                    hint,
                ),
                f"{dest}/plugin",
                runtime,
            )
            install.resources += [runtime, plugin]
            install.reason = f"release {version} ({platform}) with its wasi_nn-ggml plugin"
            prefix = f"{data_dir}/{dest}"
            install.details.update(
                wasmedge=f"{prefix}/bin/wasmedge",
                plugin_dir=f"{prefix}/plugin",
                lib_dir=f"{prefix}/lib",
            )
        llamaedge = conf.get("llamaedge_version") or DEFAULT_LLAMAEDGE_VERSION
        folder = f"{mirror}/LlamaEdge/LlamaEdge/releases/download/{llamaedge}"
        wasm_dest = f"runtimes/llamaedge-{llamaedge}/llama-api-server.wasm"
        sha = conf.get("llamaedge_sha256")
        install.resources.append(
            ReleaseFile(
                Release(
                    f"{folder}/llama-api-server.wasm",
                    sha,
                    None if sha else f"{folder}/SHA256SUM",
                    hint,
                ),
                wasm_dest,
            )
        )
        install.reason += f"; LlamaEdge {llamaedge}"
        install.details["wasm"] = f"{data_dir}/{wasm_dest}"
        return install

    # -- services ----------------------------------------------------------------------------

    def serve(
        self, install: Install, models: list[tuple[ModelSpec, ModelFile | None]],
        ports: Ports, data_dir: str,
    ) -> list[Served]:  # fmt: skip
        served = []
        for model, placed in models:
            if placed is None:
                raise ToolkitError(f"model {model.name}: LlamaEdge needs a GGUF file")
            port = ports.take(model.port)
            args = model.args
            ctx_size = int(args.get("ctx_size", DEFAULT_CTX_SIZE))
            argv = [
                install.details["wasmedge"],
                "--dir", ".:.",
                "--nn-preload", f"default:GGML:AUTO:{data_dir}/{placed.relpath}",
                install.details["wasm"],
                "--model-name", model.name,
                "--prompt-template", prompt_template(model),
                "--ctx-size", str(ctx_size),
                "--socket-addr", f"127.0.0.1:{port}",
            ]  # fmt: skip
            for key, flag in (
                ("batch_size", "--batch-size"),
                ("n_gpu_layers", "--n-gpu-layers"),
                ("threads", "--threads"),
            ):
                if key in args:
                    argv += [flag, str(args[key])]
            argv += [str(a) for a in args.get("extra", [])]
            service = Service(
                name="engine-" + re.sub(r"[^A-Za-z0-9-]", "-", model.name),
                description=f"LlamaEdge serving {model.name}",
                argv=argv,
                workdir=data_dir,
                env={
                    "WASMEDGE_PLUGIN_PATH": install.details["plugin_dir"],
                    "LD_LIBRARY_PATH": install.details["lib_dir"],
                },
                health_url=f"http://127.0.0.1:{port}{HEALTH_PATH}",
                inputs=[*install.inputs, placed.id],
            )
            backend = {"url": f"http://127.0.0.1:{port}", "runtime": "llamaedge"}
            served.append(Served(model, port, service, backend, verify="chat"))
        return served

    def capabilities(self, model: ModelSpec) -> dict[str, Any]:
        return {"max_context": int(model.args.get("ctx_size", DEFAULT_CTX_SIZE))}


def prompt_template(model: ModelSpec) -> str:
    """The playbook's ``prompt_template``, else the one the GGUF's chat template calls for
    (read from the workstation's copy of the model, fetched there first if need be)."""
    if "prompt_template" in model.args:
        return model.args["prompt_template"]
    from toolkit.models.gguf import read_gguf
    from toolkit.models.sources import fetch
    from toolkit.models.store import controller_store

    fetched = fetch(model.source, sha256=model.sha256, store=controller_store())
    info = read_gguf(fetched.path)
    chosen = prompt_templates.choose(info.chat_template, info.architecture)
    if chosen is None:
        what = (
            "has no chat template"
            if not info.chat_template
            else "has a chat template that matches none of LlamaEdge's prompt templates"
        )
        raise model.pos.error(
            f'the GGUF of model "{model.name}" {what}; write args: {{prompt_template: ...}} '
            "(e.g. chatml, llama-3-chat, gemma-3)"
        )
    return chosen
