"""What a runtime offers toolkit: how it is installed, what a model needs, what it runs.

A runtime (llama.cpp, Ollama, WasmEdge + LlamaEdge) is one module in ``toolkit/runtimes/`` with
one ``Runtime`` subclass, listed in ``toolkit/runtimes/__init__.py``. The core (playbook
validation, design, engine, report) loops over runtimes and never names one:

- ``keys`` / ``args`` / ``sources``: its playbook schema (validated with file:line like the rest);
- ``check_conf``: checks of its ``runtimes.<name>`` keys beyond their types (file:line);
- ``facts_probe``: shell the facts probe runs for it (a running daemon, a plugin that loads), its
  findings in ``Facts.probed``;
- ``resolve``: which install the host gets, from the facts and the playbook's strategy, and why;
  on a host without internet (``offline``) only what the workstation can fetch and place, else
  ``toolkit.offline.OfflineRefused`` saying what to use instead;
- ``Install.resources``: what installs it (archives, packages, builds), ``Install.pip``: what
  toolkit's virtualenv must hold for it;
- ``model_resources``: what makes a model usable by it (an import, a pull) after the file is placed;
- ``serve``: the services it runs (one per model, or one daemon for all) and, for each model, the
  routes-file backend the proxy sends its requests to;
- ``in_flight_gauges``: for a runtime with one engine per model, the gauges of the engine's
  ``metrics_path`` that count the requests it holds. Naming them lets a changed model switch to a
  new engine beside the old one, which finishes what it holds first (toolkit/switch.py); the
  others restart in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from toolkit.schema import Key

if TYPE_CHECKING:
    from toolkit.hosts.facts import Facts
    from toolkit.positions import PosDict
    from toolkit.resources.base import Resource
    from toolkit.resources.model import ModelFile
    from toolkit.services.definition import Service
    from toolkit.site import ModelSpec, RuntimeSpec


@dataclass
class Install:
    """How a runtime is installed on one host, decided from its facts."""

    strategy: str  # the strategy chosen: "present", "pip", "release", ...
    reason: str = ""  # why, for the facts line ("llama-server found at /usr/bin/llama-server")
    resources: list[Resource] = field(default_factory=list)  # what installs it, in order
    pip: list[str] = field(default_factory=list)  # requirements of toolkit's virtualenv
    files: list[Resource] = field(default_factory=list)  # scripts it needs copied (shims)
    details: dict[str, Any] = field(default_factory=dict)  # the runtime's own decisions

    @property
    def inputs(self) -> list[str]:
        """Resource ids whose change must restart the services of this runtime."""
        return [r.id for r in [*self.resources, *self.files]]


@dataclass
class Served:
    """One model as served on a host: the service that answers it and how the proxy reaches it."""

    model: ModelSpec
    port: int
    # shared by every model of a one-daemon runtime (Ollama); None for a daemon toolkit adopted
    # (found running): toolkit neither defines, starts nor stops it
    service: Service | None
    backend: dict[str, Any]  # the routes-file backend: {url, runtime[, model]}
    verify: str = "chat"  # the request that proves it answers: chat | completion | embedding
    health_url: str | None = None  # an adopted daemon's health check (a service has its own)


class Ports:
    """Engine ports on one host: the port a model asks for (the playbook checks those differ),
    else the next one from ``base`` that nothing asked for and nothing holds."""

    def __init__(self, base: int, taken: set[int]):
        self.next = base
        self.taken = set(taken)  # the proxy's port and every port a model asks for

    def take(self, wanted: int | None = None) -> int:
        if wanted:
            self.taken.add(wanted)
            return wanted
        while self.next in self.taken:
            self.next += 1
        self.taken.add(self.next)
        return self.next


class Runtime:
    """One engine family. Subclasses set the class attributes and implement the hooks."""

    name: str  # as the playbook writes it: runtimes.<name>, model runtime: <name>
    label: str  # as people say it: "llama.cpp"
    strategies: tuple[str, ...] = ("auto", "present")  # install: values the playbook may use
    implemented: tuple[str, ...] | None = None  # those that work yet (None: all of them)
    keys: dict[str, Key] = {}  # keys under runtimes.<name> besides install
    args: dict[str, Key] = {}  # keys of a model's args:
    sources: dict[str, dict[str, Key]] = {}  # source kinds the runtime fetches itself
    binaries: tuple[str, ...] = ()  # programs the facts probe looks for (path_<bin>, version_<bin>)
    in_flight_gauges: tuple[str, ...] = ()  # engine metrics counting requests held (switchable)
    metrics_path: str = "/metrics"  # where an engine of this runtime answers those gauges

    def check_conf(self, conf: PosDict) -> None:
        """Checks of ``runtimes.<name>`` beyond the schema's types; raise
        ``conf.vpos_of(key).error(...)`` so the message has file:line."""

    def facts_probe(self, spec: RuntimeSpec) -> str:
        """POSIX shell run by the facts probe of a host whose play uses this runtime, for what
        ``resolve`` needs beyond the programs on PATH; it reports with
        ``tk_fact probed_<name>_<key> VALUE``, read back as ``facts.probed["<name>_<key>"]``."""
        return ""

    def check_model(self, model: ModelSpec, conf: PosDict) -> None:
        """Checks of one model beyond the schema (names the runtime accepts...); raise
        ``conf.vpos_of(key).error(...)`` so the message has file:line."""

    def resolve(
        self, spec: RuntimeSpec, facts: Facts, data_dir: str, offline: bool = False
    ) -> Install:
        """``offline``: nothing on the host may reach the internet (``toolkit/offline.py``): no
        package manager installs, no pulls by the host; archives and models are fetched by the
        workstation and placed, as always. An ``auto`` strategy picks one that works offline."""
        raise NotImplementedError

    def needs_file(self, model: ModelSpec) -> bool:
        """Does the model come as a GGUF toolkit fetches and places (else the runtime pulls it)?"""
        return not any(kind in model.source for kind in self.sources)

    def model_resources(
        self, install: Install, model: ModelSpec, placed: ModelFile | None, data_dir: str
    ) -> list[Resource]:
        """What makes a placed model (or a name the runtime pulls) usable by this runtime."""
        return []

    def capabilities(self, model: ModelSpec) -> dict[str, Any]:
        """The routes file's capabilities of a model (system_role, max_context). Asked each time
        the routes file is rendered: what they come from (a GGUF header) may arrive in a run."""
        return {}

    def serve(
        self, install: Install, models: list[tuple[ModelSpec, ModelFile | None]],
        ports: Ports, data_dir: str,
    ) -> list[Served]:  # fmt: skip
        """One ``Served`` per model, in the order given. A service's ``inputs`` name the model
        files it reads (their change restarts it); the core adds the install's."""
        raise NotImplementedError
