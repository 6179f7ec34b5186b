"""What the workstation knows of a model from its GGUF header, once the file is in its store.

The store is content-addressed, so a header read once for a sha256 stays true for the whole
process. Before the first download nothing is known and callers go on without it: the apply that
fetches a model renders what depends on it (capabilities in the routes file) after the fetch.
"""

from __future__ import annotations

import functools
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.models.gguf import GGUFInfo, read_gguf
from toolkit.models.store import controller_store


def model_info(sha256: str | None) -> GGUFInfo | None:
    """The GGUF header of the model with this sha256, or None while it is not in the store."""
    if not sha256:
        return None
    path = controller_store().blob_path(sha256)
    return _read(sha256, str(path)) if path.is_file() else None


@functools.cache
def _read(sha256: str, path: str) -> GGUFInfo | None:
    try:
        return read_gguf(Path(path))
    except (ToolkitError, OSError, ValueError):
        return None  # not a GGUF: the engine will say so when it loads it
