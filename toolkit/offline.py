"""Hosts without internet: the switch, and the refusal of what would need it.

``offline: true`` on a host (or ``-e toolkit_offline=true``) says that nothing on that host may
reach the internet. Everything toolkit installs there then comes from the workstation: the
virtualenv built from wheels resolved there (``resources/venv_bundle.py``), engine archives and
models fetched there and placed. What only the host itself could fetch (its package manager,
an Ollama pull) is refused while the host is designed, before anything runs on it, with what to
use instead; an ``auto`` install picks a strategy that works offline and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toolkit.errors import ToolkitError

SWITCHES = ("offline", "toolkit_offline")  # host var, and the one ``-e`` sets for a whole run
_TRUE = {"1", "true", "yes", "on"}


def is_offline(host_vars: Mapping[str, Any]) -> bool:
    """``offline: true`` on the host, or ``toolkit_offline=true`` (e.g. from ``-e``)."""
    for key in SWITCHES:
        value = host_vars.get(key)
        if value is True or str(value).strip().lower() in _TRUE:
            return True
    return False


class OfflineRefused(ToolkitError):
    """Something the playbook asks for needs the host's own internet, and the host has none.

    The message says what needs it and what to use instead; ``desired.design_host`` puts
    "host <name> is offline: " in front."""
