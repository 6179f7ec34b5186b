"""Where toolkit keeps its own things on the workstation (the machine it runs on).

- cache (``$TOOLKIT_CACHE_DIR``, default ``$XDG_CACHE_HOME/toolkit``, i.e. ``~/.cache/toolkit``):
  what can be fetched again: the model store, facts of the last run;
- state (``$TOOLKIT_STATE_DIR``, default ``$XDG_STATE_HOME/toolkit``, i.e.
  ``~/.local/state/toolkit``): what cannot: run history, generated API keys and certificates,
  the playbooks ``toolkit serve`` wrote.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(os.environ.get("TOOLKIT_CACHE_DIR") or f"{base}/toolkit")


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(os.environ.get("TOOLKIT_STATE_DIR") or f"{base}/toolkit")
