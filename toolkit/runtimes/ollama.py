"""Ollama: one daemon per host serving every model it knows; toolkit pulls or imports the models.

Install strategies:

- ``present``: an ``ollama`` already on the host (on PATH, or at ``path:``);
- ``release``: the official Linux archive for the host's architecture
  (``ollama-linux-{amd64,arm64}``, ``.tar.zst`` from 0.14, ``.tgz`` before), version pinned with
  ``version:``, checked against the release's ``sha256sum.txt`` (or ``sha256:``), fetched from
  ``mirror:`` instead of github.com for hosts without internet; unpacked under the data dir;
- ``package``: Termux's ``pkg install ollama``;
- ``auto``: present when found, else package on Termux, else release.

The daemon listens on ``127.0.0.1:<port>`` (``OLLAMA_HOST``) and keeps its models in
``<data dir>/ollama/models`` (``OLLAMA_MODELS``) unless ``models_dir:`` says otherwise. Models:
``source: {ollama: name[:tag]}`` is pulled by Ollama (``/api/pull``); any GGUF toolkit places is
imported without a second download (``/api/blobs`` from the placed file, then ``/api/create``),
under the model's own name. The routes file names the model as Ollama knows it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.offline import OfflineRefused
from toolkit.resources.archive import Archive, Release
from toolkit.resources.base import Change, HostContext, Resource, RunOptions
from toolkit.resources.files import File
from toolkit.resources.packages import Packages
from toolkit.runtimes.base import Install, Ports, Runtime, Served
from toolkit.schema import Key
from toolkit.services.definition import Service

if TYPE_CHECKING:
    from toolkit.hosts.facts import Facts
    from toolkit.positions import PosDict
    from toolkit.resources.model import ModelFile
    from toolkit.site import ModelSpec, RuntimeSpec

DEFAULT_VERSION = "0.31.1"
GITHUB = "https://github.com"
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
HELPER = Path(__file__).with_name("ollama_models.py")
HELPER_RELPATH = "bin/ollama_models.py"
HEALTH_PATH = "/api/version"
# name[:tag], with an optional namespace or registry path before the name (library/x, hf.co/u/r)
OLLAMA_NAME = re.compile(
    r"^(?:[a-z0-9][a-z0-9._-]*/){0,2}[a-z0-9][a-z0-9._-]*(?::[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"
)


def full_name(name: str) -> str:
    """The name as /api/tags lists it: ``:latest`` when no tag is given."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def suggested_name(name: str) -> str:
    """A valid Ollama name close to ``name``: lower case, other characters as "-", one tag."""
    head, _, tag = name.strip().partition(":")
    head = re.sub(r"[^a-z0-9._/-]+", "-", head.lower()).strip("-./") or "model"
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", tag).strip("-.")
    return f"{head}:{tag}" if tag else head


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("-")[0])[:3])


class Ollama(Runtime):
    name = "ollama"
    label = "Ollama"
    strategies = ("auto", "present", "package", "release")
    keys = {
        "version": Key((str,)),  # release: the Ollama version (default DEFAULT_VERSION)
        "sha256": Key((str,)),  # release: the archive's digest, instead of sha256sum.txt
        "mirror": Key((str,)),  # release: replaces https://github.com in download URLs
        "path": Key((str,)),  # present: the ollama binary
        "port": Key((int,)),  # the daemon's port (default: the next free engine port)
        "models_dir": Key((str,)),  # OLLAMA_MODELS (default: <data dir>/ollama/models)
        "user": Key((str,)),  # systemd: the daemon's user (default: ollama when root)
    }
    args = {
        "template": Key((str,)),  # an import's chat template (Go template, as in a Modelfile)
        "system": Key((str,)),  # an import's system prompt
        "parameters": Key((dict,)),  # an import's parameters: {num_ctx: 4096, stop: [...]}
    }
    sources = {"ollama": {"ollama": Key((str,), required=True)}}
    binaries = ("ollama",)

    # -- playbook ----------------------------------------------------------------------------

    def check_model(self, model: ModelSpec, conf: PosDict) -> None:
        pulled = model.source.get("ollama")
        name = pulled if pulled is not None else model.name
        if not OLLAMA_NAME.match(name):
            at = conf["source"].vpos_of("ollama") if pulled is not None else conf.vpos_of("name")
            what = "an Ollama model name" if pulled is not None else "a name Ollama accepts"
            raise at.error(
                f'"{name}" is not {what} (name[:tag], lower case, e.g. gemma3:270m); '
                f'did you mean "{suggested_name(name)}"?'
            )
        if pulled is not None and model.args:
            raise conf.vpos_of("args").error(
                f'args of model "{model.name}" apply to GGUF imports; a model pulled by Ollama '
                "comes with its own template and parameters"
            )

    # -- install -----------------------------------------------------------------------------

    def resolve(
        self, spec: RuntimeSpec, facts: Facts, data_dir: str, offline: bool = False
    ) -> Install:
        conf = spec.conf
        found = conf.get("path") or facts.binaries.get("ollama")
        strategy = spec.install
        if strategy == "auto":
            strategy = "present" if found else "package" if facts.termux else "release"
        if offline and strategy == "package" and not found:
            raise OfflineRefused(
                "Ollama install: package runs pkg install ollama, which needs the host's "
                "internet; install it on the host first (install: present)"
            )
        install = Install(strategy, files=[File(HELPER_RELPATH, lambda ctx: HELPER.read_bytes())])
        install.details["offline"] = offline
        install.details["models_dir"] = conf.get("models_dir") or f"{data_dir}/ollama/models"
        install.details["conf_port"] = conf.get("port")
        # As Ollama's installer: a dedicated user for the daemon when root runs systemd.
        user = conf.get("user")
        if user is None and facts.uid == 0 and facts.systemd_system and not facts.termux:
            user = "ollama"
        install.details["user"] = None if user == "root" else user
        if strategy == "present":
            if not found:
                raise ToolkitError(
                    "Ollama install: present, but no ollama on PATH; set runtimes.ollama.path "
                    "or use install: release"
                )
            install.reason = f"ollama found at {found}"
            install.details["binary"] = found
            self._add_user(install, data_dir)
            return install
        if strategy == "package":
            if not facts.termux:
                raise ToolkitError(
                    f"Ollama install: package is Termux's `pkg install ollama`; this host is "
                    f"{facts.distro or facts.os} {facts.distro_version} {facts.arch}, whose "
                    "packages have no Ollama: use install: release (or present)"
                )
            install.resources.append(Packages("pkg", ["ollama"]))
            install.reason = "Termux package ollama"
            install.details["binary"] = f"{facts.prefix}/bin/ollama"
            return install
        version = conf.get("version") or DEFAULT_VERSION
        arch = ARCHES.get(facts.arch)
        if arch is None or facts.os not in ("Linux", ""):
            raise ToolkitError(
                f"Ollama install: release has Linux amd64 and arm64 archives; this host is "
                f"{facts.os} {facts.arch}"
            )
        suffix = "tar.zst" if version_tuple(version) >= (0, 14) else "tgz"
        mirror = (conf.get("mirror") or GITHUB).rstrip("/")
        folder = f"{mirror}/ollama/ollama/releases/download/v{version}"
        release = Release(
            url=f"{folder}/ollama-linux-{arch}.{suffix}",
            sha256=conf.get("sha256"),
            checksums_url=None if conf.get("sha256") else f"{folder}/sha256sum.txt",
            fix_hint=(
                f"fix runtimes.ollama.mirror ({mirror})"
                if conf.get("mirror")
                else "set runtimes.ollama.mirror to a server that holds Ollama's releases"
            ),
        )
        dest = f"runtimes/ollama-{version}-{arch}"
        install.resources.append(Archive(release, dest))
        install.reason = f"release {version} for {arch}"
        install.details["binary"] = f"{data_dir}/{dest}/bin/ollama"
        self._add_user(install, data_dir)
        return install

    def _add_user(self, install: Install, data_dir: str) -> None:
        user = install.details["user"]
        if user:
            folders = [install.details["models_dir"], f"{data_dir}/ollama"]
            install.resources.append(DaemonUser(user, folders, install.details["binary"]))

    # -- models ------------------------------------------------------------------------------

    def model_resources(
        self, install: Install, model: ModelSpec, placed: ModelFile | None, data_dir: str
    ) -> list[Resource]:
        if install.details.get("offline") and model.source.get("ollama"):
            raise OfflineRefused(
                f'model "{model.name}": the ollama pull source needs the host\'s internet; give '
                "a GGUF source (pypi, hf, url or path) to import it"
            )
        return [OllamaModel(install, model, placed, data_dir)]

    # -- services ----------------------------------------------------------------------------

    def serve(
        self, install: Install, models: list[tuple[ModelSpec, ModelFile | None]],
        ports: Ports, data_dir: str,
    ) -> list[Served]:  # fmt: skip
        port = install.details.get("port") or ports.take(install.details.get("conf_port"))
        install.details["port"] = port
        service = Service(
            name="ollama",
            description=f"Ollama serving {', '.join(m.name for m, _ in models)}",
            argv=[install.details["binary"], "serve"],
            workdir=data_dir,
            env={
                "OLLAMA_HOST": f"127.0.0.1:{port}",
                "OLLAMA_MODELS": install.details["models_dir"],
                "HOME": f"{data_dir}/ollama",  # its key pair (~/.ollama/id_ed25519) lives there
            },
            health_url=f"http://127.0.0.1:{port}{HEALTH_PATH}",
            inputs=list(install.inputs),
            user=install.details["user"],
        )
        served = []
        for model, _placed in models:
            backend = {
                "url": f"http://127.0.0.1:{port}",
                "runtime": "ollama",
                "model": ollama_name(model),
            }
            served.append(Served(model, port, service, backend, verify="chat"))
        return served

    def capabilities(self, model: ModelSpec) -> dict[str, Any]:
        """The context an import was created with (``parameters: {num_ctx: N}``); a pulled
        model's comes from Ollama and is not known here."""
        num_ctx = (model.args.get("parameters") or {}).get("num_ctx")
        return {"max_context": num_ctx} if isinstance(num_ctx, int) and num_ctx > 0 else {}


def ollama_name(model: ModelSpec) -> str:
    """The name Ollama knows the model by: the pulled name, or the model's own for an import."""
    return full_name(model.source.get("ollama") or model.name)


class OllamaModel(Resource):
    """A model the host's Ollama lists in /api/tags: pulled by it, or imported from the GGUF
    toolkit placed. Runs after the services started; waits for the daemon before acting."""

    def __init__(self, install: Install, model: ModelSpec, placed: ModelFile | None, data_dir: str):
        self.install = install
        self.model = model
        self.placed = placed
        self.name = ollama_name(model)
        self.id = f"ollama-model:{self.name}"
        self.record = f"ollama/imports/{re.sub(r'[^A-Za-z0-9._-]', '-', self.name)}"

    def url(self) -> str:
        return f"http://127.0.0.1:{self.install.details['port']}"

    def create_request(self) -> dict[str, Any]:
        args = self.model.args
        return {key: args[key] for key in ("template", "system", "parameters") if key in args}

    def record_value(self) -> str:
        """What was imported, as one line: the GGUF's sha256 and the create request's."""
        request = json.dumps(self.create_request(), sort_keys=True).encode()
        return f"{self.model.sha256} {hashlib.sha256(request).hexdigest()}"

    def probe(self, options: RunOptions) -> str:
        helper = f'"$TK_DATA"/{quote(HELPER_RELPATH)}'
        snippet = (
            f'[ -x "$TK_DATA/venv/bin/python" ] && [ -f {helper} ] && '
            f'printf "tags=%s\\n" "$("$TK_DATA/venv/bin/python" {helper} tags {quote(self.url())})"'
        )
        if self.placed is not None:
            snippet += (
                f'; printf "record=%s\\n" "$(cat "$TK_DATA"/{quote(self.record)} 2>/dev/null)"'
            )
        return snippet

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        seen = dict(line.split("=", 1) for line in observed.splitlines() if "=" in line)
        try:
            models = json.loads(seen.get("tags") or "null")
            known = {m.get("name") for m in models.get("models", [])} if models else None
        except (ValueError, AttributeError):
            known = None
        pull = self.model.source.get("ollama")
        recorded = seen.get("record", "").strip() == self.record_value()
        if known is not None and self.name in known and (pull or recorded):
            return None
        if pull:
            return Change(self, f"pull {pull} (Ollama)")
        return Change(self, f"import {self.model.name} into Ollama from the placed GGUF")

    def apply(self, change: Change, ctx: HostContext) -> None:
        spec: dict[str, Any] = {"url": self.url(), "name": self.name, "deadline_s": 120}
        if self.model.source.get("ollama"):
            spec["pull"] = self.model.source["ollama"]
        else:
            spec.update(
                file=ctx.path(self.placed.relpath),
                filename=f"{self.model.name}.gguf",
                sha256=self.model.sha256,
                create=self.create_request(),
                record=ctx.path(self.record),
                record_value=self.record_value(),
            )
        python, helper = ctx.path("venv/bin/python"), ctx.path(HELPER_RELPATH)
        result = ctx.conn.run(f"{quote(python)} {quote(helper)} ensure {quote(json.dumps(spec))}",
                              timeout=7200)  # fmt: skip
        events = []
        for line in result.stdout.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        verb = "pull" if "pull" in spec else "import"
        progress = ctx.progress(f"{verb} {self.name}")
        for event in events:
            if progress and "total" in event:
                progress(int(event.get("completed") or 0), int(event["total"]))
        if result.rc != 0 or not events or "result" not in events[-1]:
            error = events[-1].get("error") if events else None
            detail = error or (result.stderr.strip() or result.stdout.strip())[-500:]
            raise ToolkitError(f"Ollama {verb} of {self.name} failed: {detail}")


class DaemonUser(Resource):
    """The system user the daemon runs as (systemd ``User=``), as Ollama's installer makes it,
    owning the folders the daemon writes, and able to run the binary."""

    def __init__(self, user: str, folders: list[str], binary: str):
        self.user = user
        self.folders = folders
        self.binary = binary
        self.id = f"user:{user}"

    def probe(self, options: RunOptions) -> str:
        owners = "; ".join(f"stat -c %U {quote(f)} 2>/dev/null || echo -" for f in self.folders)
        return f"id -u {quote(self.user)} 2>/dev/null || echo -; {owners}"

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        lines = observed.split()
        if not lines or lines[0] == "-":
            return Change(self, f"create system user {self.user}")
        if any(owner != self.user for owner in lines[1:]) or len(lines) <= len(self.folders):
            return Change(self, f"give {self.user} its folders")
        return None

    def apply(self, change: Change, ctx: HostContext) -> None:
        user, folders = quote(self.user), " ".join(quote(f) for f in self.folders)
        ctx.sh(
            f"id -u {user} >/dev/null 2>&1 || "
            f"useradd -r -s /bin/false -U -m -d /usr/share/{user} {user} || exit 1\n"
            f"mkdir -p {folders} && chown -R {user}:{user} {folders} || exit 1\n"
            f"if command -v runuser >/dev/null 2>&1 && ! runuser -u {user} -- test -x "
            f'{quote(self.binary)}; then echo "user {self.user} cannot run {self.binary}: a '
            "folder on its path is closed to other users; set toolkit_data_dir to one they can "
            f'enter (e.g. /opt/toolkit), or runtimes.ollama.user: root" >&2; exit 1; fi',
            f"creating the {self.user} user",
        )
