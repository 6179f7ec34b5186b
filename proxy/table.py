"""The live routing table: what the routes file says, joined with the live backends.

A new table is built on every (re)load and swapped in whole; requests in flight keep the table
they started with, and backends keep their health and in-flight counts across reloads.
"""

from __future__ import annotations

import json
from pathlib import Path

from .auth import KeySet, load_keys
from .backends import Backend
from .routes import ModelRoute, Routes, load_routes


class Target:
    """A model as requests see it: its route and its live backends."""

    __slots__ = ("route", "backends", "backend_models")

    def __init__(self, route: ModelRoute, backends: list[Backend]) -> None:
        self.route = route
        self.backends = backends
        # the model name each backend expects, by backend URL
        self.backend_models = {spec.url: spec.model or route.name for spec in route.backends}


class RouteTable:
    def __init__(self, routes: Routes, keys: KeySet, pool: dict[str, Backend]) -> None:
        self.routes = routes
        self.keys = keys
        self.max_body_bytes = routes.max_body_bytes
        self.backends: dict[str, Backend] = {}
        targets: dict[str, Target] = {}
        for route in routes.models.values():
            live = []
            for spec in route.backends:
                backend = self.backends.get(spec.url) or pool.get(spec.url)
                if backend is None or backend.runtime != spec.runtime:
                    backend = Backend(spec.url, spec.runtime)
                self.backends[spec.url] = backend
                live.append(backend)
            targets[route.name] = Target(route, live)
        self.targets = {name: targets[route.name] for name, route in routes.lookup().items()}
        self.model_names = ", ".join(sorted(routes.models))
        self.model_cards = self._model_cards()
        self.models_json = json.dumps({"object": "list", "data": self.model_cards}).encode()

    def _model_cards(self) -> list[dict[str, object]]:
        """OpenAI model objects for every name a client may send, aliases included."""
        data = []
        for name, target in self.targets.items():
            route = target.route
            runtime = route.backends[0].runtime
            entry: dict[str, object] = {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": runtime,
                "runtime": runtime,
            }
            if name != route.name:
                entry["root"] = route.name
            if route.capabilities.max_context:
                entry["max_context"] = route.capabilities.max_context
            data.append(entry)
        return data


def load_table(path: str | Path, pool: dict[str, Backend] | None = None) -> RouteTable:
    """Read the routes file and the keys it names; raises RoutesError."""
    routes = load_routes(path)
    return RouteTable(routes, load_keys(routes.keys_file), pool or {})
