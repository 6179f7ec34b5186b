"""Where the files toolkit ships live: templates, example playbooks and inventories.

In a source checkout they are the top-level folders of the repository; in an installed wheel
they are package data of ``toolkit.data`` (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def asset_path(relative: str) -> Path:
    candidate = _REPO / relative
    if candidate.exists():
        return candidate
    from importlib.resources import files

    return Path(str(files("toolkit.data").joinpath(relative)))


def templates_dir() -> Path:
    return asset_path("templates")


def proxy_dir() -> Path:
    """The proxy package, copied as plain files to each host."""
    import proxy

    return Path(proxy.__file__).resolve().parent
