"""The runtimes toolkit can install and serve models with, by the name playbooks use.

A new runtime is one module with a ``Runtime`` subclass (see ``base.py``) and one entry here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolkit.runtimes.base import Runtime
from toolkit.runtimes.llamacpp import LlamaCpp
from toolkit.runtimes.ollama import Ollama
from toolkit.runtimes.wasmedge import WasmEdge

if TYPE_CHECKING:
    from toolkit.site import RuntimeSpec

RUNTIMES: dict[str, Runtime] = {
    runtime.name: runtime for runtime in (LlamaCpp(), Ollama(), WasmEdge())
}
DEFAULT = LlamaCpp.name  # what serves a lone GGUF file (toolkit serve)


def binaries() -> list[str]:
    """The programs the facts probe looks for on every host."""
    return [name for runtime in RUNTIMES.values() for name in runtime.binaries]


def facts_probes(specs: dict[str, RuntimeSpec]) -> str:
    """The shell the facts probe runs for the runtimes a play uses (Runtime.facts_probe)."""
    return "\n".join(
        filter(None, (RUNTIMES[name].facts_probe(spec) for name, spec in specs.items()))
    )
