"""Ollama: one daemon per host serving every model it knows; toolkit pulls or imports the models.

Install strategies:

- ``present``: an ``ollama`` already on the host (on PATH, or at ``path:``), run as toolkit's
  service; or, with ``url:`` or when no ``ollama`` is on PATH, a running Ollama answering
  ``/api/version`` at ``url:`` (else the host's ``$OLLAMA_HOST``, else 127.0.0.1:11434), which
  toolkit adopts: models go into it, the routes file points at it, and toolkit neither defines,
  starts nor stops it (``toolkit down`` leaves it running);
- ``release``: the official Linux archive for the host's architecture
  (``ollama-linux-{amd64,arm64}``, ``.tar.zst`` from 0.14, ``.tgz`` before), version pinned with
  ``version:``, checked against the release's ``sha256sum.txt`` (or ``sha256:``), fetched from
  ``mirror:`` instead of github.com for hosts without internet; unpacked under the data dir;
- ``package``: Termux's ``pkg install ollama``;
- ``auto``: present when found (on PATH or running), else package on Termux, else release.

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
from urllib.parse import urlsplit

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
DEFAULT_URL = "http://127.0.0.1:11434"  # where Ollama listens unless told otherwise
HEALTH_PATH = "/api/version"
# name[:tag], with an optional namespace or registry path before the name (library/x, hf.co/u/r)
# OLLAMA_HOST's form: [http[s]://]host[:port][/path]
OLLAMA_HOST = re.compile(
    r"^(?:https?://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]*)(?::\d{1,5})?(?:/\S*)?$"
)
# The shell form of Ollama's own client reading OLLAMA_HOST (envconfig.Host, ConnectableHost):
# no scheme means http and port 11434, http:// alone port 80, https:// 443; 0.0.0.0 and [::]
# (listen everywhere) are reached on loopback.
OLLAMA_URL_SH = r"""tk_ollama_url() {
  tk_h=$1; tk_s=http; tk_d=11434; tk_p=
  case $tk_h in *://*) tk_s=${tk_h%%://*}; tk_h=${tk_h#*://}; tk_d=80
    [ "$tk_s" = https ] && tk_d=443 ;; esac
  case $tk_h in */*) tk_p=/${tk_h#*/}; tk_p=${tk_p%/}; tk_h=${tk_h%%/*} ;; esac
  case $tk_h in \[*\]:*) ;; \[*) tk_h=$tk_h:$tk_d ;; *:*) ;; *) tk_h=$tk_h:$tk_d ;; esac
  case $tk_h in :*) tk_h=127.0.0.1$tk_h ;; 0.0.0.0:*) tk_h=127.0.0.1:${tk_h#*:} ;;
    \[::\]:*) tk_h=[::1]:${tk_h##*]:} ;; esac
  printf '%s://%s%s' "$tk_s" "$tk_h" "$tk_p"
}"""
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
        "url": Key((str,)),  # present: a running Ollama to adopt, as OLLAMA_HOST writes it
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

    def check_conf(self, conf: PosDict) -> None:
        url = conf.get("url")
        if url is None:
            return
        if not OLLAMA_HOST.match(url):
            raise conf.vpos_of("url").error(
                f'runtimes.ollama.url "{url}" is not an address Ollama listens on '
                "([http://]host[:port], as OLLAMA_HOST writes it, e.g. 127.0.0.1:11434)"
            )
        if conf.get("install", "auto") not in ("auto", "present"):
            raise conf.vpos_of("url").error(
                f"runtimes.ollama.url names a running Ollama to adopt (install: present); with "
                f"install: {conf['install']} toolkit runs its own on port: (remove url:)"
            )
        if conf.get("path"):
            raise conf.vpos_of("url").error(
                "runtimes.ollama.url adopts a running Ollama, path: runs one as toolkit's "
                "service: keep one of them"
            )

    def facts_probe(self, spec: RuntimeSpec) -> str:
        """Is an Ollama answering /api/version where ``present`` would adopt one: at ``url:``,
        or, when no ollama is on PATH, at $OLLAMA_HOST (else 127.0.0.1:11434)? Reports
        ``probed_ollama_daemon=<url> <version or ->``."""
        if spec.install not in ("auto", "present") or spec.conf.get("path"):
            return ""
        url = spec.conf.get("url")
        where = quote(url) if url else '"${OLLAMA_HOST:-}"'
        probe = (
            f"{OLLAMA_URL_SH}\ntk_u=$(tk_ollama_url {where})\n"
            f'tk_v=$(tk_http_get "$tk_u{HEALTH_PATH}" | '
            """sed -n 's/.*"version" *: *"\\([^"]*\\)".*/\\1/p')\n"""
            'tk_fact probed_ollama_daemon "$tk_u ${tk_v:--}"'
        )
        return probe if url else f"if ! command -v ollama >/dev/null 2>&1; then\n{probe}\nfi"

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
        daemon, _, daemon_version = (facts.probed.get("ollama_daemon") or "").partition(" ")
        answering = daemon_version not in ("", "-")
        strategy = spec.install
        if strategy == "auto":
            present = found or answering or conf.get("url")
            strategy = "present" if present else "package" if facts.termux else "release"
        if strategy == "present" and (conf.get("url") or not found):
            return self._adopt(conf, daemon, daemon_version if answering else None, data_dir)
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

    def _adopt(self, conf: dict, url: str, version: str | None, data_dir: str) -> Install:
        """A running Ollama toolkit did not start: used as it is, never started nor stopped."""
        where = "runtimes.ollama.url" if conf.get("url") else "$OLLAMA_HOST, else 127.0.0.1:11434"
        if version is None:
            tried = f"{url}{HEALTH_PATH}" if url else "its address"
            # Refused when the host is planned, not here: `toolkit down` designs the host too,
            # and must still stop toolkit's own proxy when the daemon it adopted has gone.
            missing = Install("present", "no Ollama answering")
            missing.resources.append(Refusal(
                f"Ollama install: present, but no ollama on PATH and no Ollama answering "
                f"{tried} ({where}); start that Ollama, set runtimes.ollama.url (a running "
                "one) or path (a binary), or use install: release"
                if not conf.get("url")
                else f"Ollama install: no Ollama answers {tried} ({where}); start it, or fix "
                "runtimes.ollama.url"
            ))  # fmt: skip
            missing.details.update(url=url or DEFAULT_URL, adopted=True, version=None)
            return missing
        why = "runtimes.ollama.url" if conf.get("url") else "no ollama on PATH"
        install = Install(
            "present",
            f"adopted the running Ollama {version} at {url} ({why}); toolkit does not stop it",
            files=[File(HELPER_RELPATH, lambda ctx: HELPER.read_bytes())],
        )
        install.details.update(url=url, adopted=True, version=version)
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
        if install.details.get("adopted"):
            url = install.details["url"]
            split = urlsplit(url)
            port = split.port or (443 if split.scheme == "https" else 80)
            backend = {"url": url, "runtime": "ollama"}
            return [
                Served(model, port, None, {**backend, "model": ollama_name(model)}, "chat",
                       health_url=f"{url}{HEALTH_PATH}")
                for model, _placed in models
            ]  # fmt: skip
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
        details = self.install.details
        return details.get("url") or f"http://127.0.0.1:{details['port']}"

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
        verb = "pull" if "pull" in spec else "import"
        progress = PullProgress(ctx, f"{verb} {self.name}")
        result = ctx.conn.run(
            f"{quote(python)} {quote(helper)} ensure {quote(json.dumps(spec))}",
            timeout=7200,
            on_stdout=progress.feed,
        )
        progress.feed(b"\n")  # a last line without its newline
        events = progress.events
        if result.rc != 0 or not events or "result" not in events[-1]:
            error = events[-1].get("error") if events else None
            detail = error or (result.stderr.strip() or result.stdout.strip())[-500:]
            raise ToolkitError(f"Ollama {verb} of {self.name} failed: {detail}")


class PullProgress:
    """Ollama's NDJSON progress, read as the host's helper prints it, shown as toolkit's progress
    while the pull runs: one bar per layer (Ollama pulls a model's layers one after the other,
    each with its own total), as Ollama's own CLI draws them."""

    def __init__(self, ctx: HostContext, label: str):
        self.ctx = ctx
        self.label = label
        self.partial = b""  # the start of a line whose end has not come yet
        self.events: list[dict[str, Any]] = []
        self.bars: dict[str, Any] = {}  # layer (digest, else status) -> progress callback

    def feed(self, chunk: bytes) -> None:
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            self.events.append(event)
            if isinstance(event.get("total"), int) and event["total"] > 0:
                layer = str(event.get("digest") or event.get("status") or "")
                if layer not in self.bars:
                    status = str(event.get("status") or "")
                    self.bars[layer] = self.ctx.progress(f"{self.label}: {status}".rstrip(": "))
                if self.bars[layer]:
                    self.bars[layer](int(event.get("completed") or 0), event["total"])


class Refusal(Resource):
    """What the facts already rule out, refused when the host is planned (before any change)."""

    id = "ollama:daemon"

    def __init__(self, message: str):
        self.message = message

    def plan(self, observed: str, ctx: HostContext, pending: set[str]) -> Change | None:
        raise ToolkitError(self.message)


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
