"""The runtimes toolkit can install and serve models with, by the name playbooks use.

A new runtime is one module with a ``Runtime`` subclass (see ``base.py``) and one entry here.
"""

from __future__ import annotations

from toolkit.runtimes.base import Runtime
from toolkit.runtimes.llamacpp import LlamaCpp

RUNTIMES: dict[str, Runtime] = {runtime.name: runtime for runtime in (LlamaCpp(),)}
DEFAULT = LlamaCpp.name  # what serves a lone GGUF file (toolkit serve)


def binaries() -> list[str]:
    """The programs the facts probe looks for on every host."""
    return [name for runtime in RUNTIMES.values() for name in runtime.binaries]
