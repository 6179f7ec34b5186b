"""The routes file: which models exist, where their backends are, what they can do.

The file is YAML, written by toolkit or by hand::

    models:
      gemma-3-270m:
        aliases: [gemma]
        backends:
          - {url: "http://127.0.0.1:8081", runtime: llamacpp}
        capabilities: {system_role: false, max_context: 4096}
        timeouts: {connect: 2, first_byte: 120, idle: 60}
    keys_file: /etc/toolkit/api-keys
    max_body_bytes: 16777216      # optional
    health_interval: 5            # optional, seconds between active health checks
    keepalive_timeout: 75         # optional, seconds an idle client connection is kept open
    tls: {cert: /etc/toolkit/proxy.crt, key: /etc/toolkit/proxy.key}  # optional: speak HTTPS
    send_timeout: 60              # optional, seconds a client may read nothing of its answer
    max_connections: 1000         # optional, client connections per worker (503 past it)

Every mistake is reported as ``RoutesError("file:line: message")``, using PyYAML's node marks.
This module needs only PyYAML and the standard library: it is parsed once per (re)load, never on
the request path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import yaml

RUNTIMES = ("llamacpp", "ollama", "llamaedge", "openai")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_HEALTH_INTERVAL = 5.0
DEFAULT_KEEPALIVE_TIMEOUT = 75.0  # nginx's default
DEFAULT_SEND_TIMEOUT = 60.0  # nginx's default
DEFAULT_MAX_CONNECTIONS = 1000  # per worker: nginx's worker_connections 1024, less headroom


class RoutesError(Exception):
    """The routes file is missing or wrong; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class BackendSpec:
    url: str  # scheme://host:port, no trailing slash
    runtime: str
    model: str | None = None  # the name the backend knows the model by, when it differs


@dataclass(frozen=True)
class Capabilities:
    system_role: bool = True
    max_context: int | None = None


@dataclass(frozen=True)
class Timeouts:
    connect: float = 2.0
    first_byte: float = 120.0
    idle: float = 60.0


@dataclass(frozen=True)
class TlsFiles:
    """The proxy's certificate (PEM, the chain after it) and its private key (PEM)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ModelRoute:
    name: str
    backends: tuple[BackendSpec, ...]
    aliases: tuple[str, ...] = ()
    capabilities: Capabilities = field(default_factory=Capabilities)
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass(frozen=True)
class Routes:
    source: Path
    models: dict[str, ModelRoute]
    keys_file: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    tls: TlsFiles | None = None  # read at start only: a new certificate takes a restart
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def lookup(self) -> dict[str, ModelRoute]:
        """Every name a client may send (model names and aliases) -> its route."""
        table: dict[str, ModelRoute] = {}
        for route in self.models.values():
            table[route.name] = route
            for alias in route.aliases:
                table[alias] = route
        return table


def load_routes(path: str | Path) -> Routes:
    """Read and validate the routes file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutesError(f"{path}: cannot read routes file: {exc.strerror or exc}") from None
    return parse_routes(text, path)


def parse_routes(text: str, path: Path) -> Routes:
    reader = _Reader(path)
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RoutesError(f"{path}:{line}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise RoutesError(f"{path}:1: invalid YAML: {exc}") from None
    if root is None:
        raise RoutesError(f"{path}:1: the routes file is empty; it needs a 'models' mapping")
    return reader.routes(root)


class _Reader:
    """Turns composed YAML nodes into Routes, naming ``file:line`` for each mistake."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, node: yaml.Node, message: str) -> RoutesError:
        return RoutesError(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        items: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, f"a key of {what}")
            if allowed and key not in allowed:
                raise self.error(
                    key_node,
                    f"unknown key {key!r} in {what} (expected one of {', '.join(allowed)})",
                )
            if key in items:
                raise self.error(key_node, f"duplicate key {key!r} in {what}")
            items[key] = value_node
        return items

    def scalar(self, node: yaml.Node, what: str) -> object:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what} must be a single value")
        return yaml.SafeLoader("").construct_object(node)

    def string(self, node: yaml.Node, what: str) -> str:
        value = self.scalar(node, what)
        if not isinstance(value, str) or not value:
            raise self.error(node, f"{what} must be a non-empty string")
        return value

    def number(self, node: yaml.Node, what: str, *, integer: bool = False) -> float:
        value = self.scalar(node, what)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            kind = "integer" if integer else "number"
            raise self.error(node, f"{what} must be a positive {kind}")
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool:
        value = self.scalar(node, what)
        if not isinstance(value, bool):
            raise self.error(node, f"{what} must be true or false")
        return value

    def routes(self, root: yaml.Node) -> Routes:
        top = self.mapping(
            root,
            "the routes file",
            (
                "models",
                "keys_file",
                "max_body_bytes",
                "health_interval",
                "keepalive_timeout",
                "tls",
                "send_timeout",
                "max_connections",
            ),
        )
        if "models" not in top:
            raise self.error(root, "the routes file needs a 'models' mapping")
        models_node = top["models"]
        models: dict[str, ModelRoute] = {}
        names: dict[str, yaml.Node] = {}
        for name, node in self.mapping(models_node, "models", ()).items():
            route = self.model(name, node)
            for alias_name in (name, *route.aliases):
                if alias_name in names:
                    raise self.error(node, f"model name or alias {alias_name!r} is used twice")
                names[alias_name] = node
            models[name] = route
        if not models:
            raise self.error(models_node, "'models' is empty")
        keys_file = None
        if "keys_file" in top:
            keys_file = Path(self.string(top["keys_file"], "keys_file"))
            if not keys_file.is_absolute():
                keys_file = self.path.parent / keys_file
        routes = Routes(source=self.path, models=models, keys_file=keys_file)
        if "max_body_bytes" in top:
            limit = int(self.number(top["max_body_bytes"], "max_body_bytes", integer=True))
            routes = replace(routes, max_body_bytes=limit)
        if "health_interval" in top:
            interval = float(self.number(top["health_interval"], "health_interval"))
            routes = replace(routes, health_interval=interval)
        if "keepalive_timeout" in top:
            keepalive = float(self.number(top["keepalive_timeout"], "keepalive_timeout"))
            routes = replace(routes, keepalive_timeout=keepalive)
        if "tls" in top:
            routes = replace(routes, tls=self.tls(top["tls"]))
        if "send_timeout" in top:
            send_timeout = float(self.number(top["send_timeout"], "send_timeout"))
            routes = replace(routes, send_timeout=send_timeout)
        if "max_connections" in top:
            cap = int(self.number(top["max_connections"], "max_connections", integer=True))
            routes = replace(routes, max_connections=cap)
        return routes

    def tls(self, node: yaml.Node) -> TlsFiles:
        fields = self.mapping(node, "tls", ("cert", "key"))
        for name in ("cert", "key"):
            if name not in fields:
                raise self.error(node, f"tls needs '{name}' (a PEM file)")
        paths = []
        for name in ("cert", "key"):
            path = Path(self.string(fields[name], f"tls.{name}"))
            paths.append(path if path.is_absolute() else self.path.parent / path)
        return TlsFiles(cert=paths[0], key=paths[1])

    def model(self, name: str, node: yaml.Node) -> ModelRoute:
        what = f"model {name!r}"
        fields = self.mapping(node, what, ("aliases", "backends", "capabilities", "timeouts"))
        if "backends" not in fields:
            raise self.error(node, f"{what} needs 'backends'")
        backends_node = fields["backends"]
        if not isinstance(backends_node, yaml.SequenceNode) or not backends_node.value:
            raise self.error(backends_node, f"'backends' of {what} must be a non-empty list")
        backends = tuple(self.backend(item, what) for item in backends_node.value)
        aliases: tuple[str, ...] = ()
        if "aliases" in fields:
            aliases_node = fields["aliases"]
            if not isinstance(aliases_node, yaml.SequenceNode):
                raise self.error(aliases_node, f"'aliases' of {what} must be a list")
            aliases = tuple(self.string(item, f"an alias of {what}") for item in aliases_node.value)
        capabilities = Capabilities()
        if "capabilities" in fields:
            caps = self.mapping(
                fields["capabilities"], f"capabilities of {what}", ("system_role", "max_context")
            )
            capabilities = Capabilities(
                system_role=self.boolean(caps["system_role"], "system_role")
                if "system_role" in caps
                else True,
                max_context=int(self.number(caps["max_context"], "max_context", integer=True))
                if "max_context" in caps
                else None,
            )
        timeouts = Timeouts()
        if "timeouts" in fields:
            given = self.mapping(
                fields["timeouts"], f"timeouts of {what}", ("connect", "first_byte", "idle")
            )
            timeouts = Timeouts(
                **{
                    key: float(self.number(value, f"timeouts.{key}"))
                    for key, value in given.items()
                }
            )
        return ModelRoute(
            name=name,
            backends=backends,
            aliases=aliases,
            capabilities=capabilities,
            timeouts=timeouts,
        )

    def backend(self, node: yaml.Node, what: str) -> BackendSpec:
        fields = self.mapping(node, f"a backend of {what}", ("url", "runtime", "model"))
        if "url" not in fields:
            raise self.error(node, f"a backend of {what} needs 'url'")
        url = self.string(fields["url"], "url").rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.error(fields["url"], f"url {url!r} must be http(s)://host[:port]")
        if parts.path or parts.query:
            raise self.error(fields["url"], f"url {url!r} must not have a path; give the base URL")
        runtime = self.string(fields["runtime"], "runtime") if "runtime" in fields else "openai"
        if runtime not in RUNTIMES:
            raise self.error(
                fields["runtime"], f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}"
            )
        model = self.string(fields["model"], "model") if "model" in fields else None
        return BackendSpec(url=url, runtime=runtime, model=model)
