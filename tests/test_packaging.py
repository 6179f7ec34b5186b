"""What `pip install .` (not editable) ships: every package of the source tree."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_for_the_wheel():
    # A package missing from pyproject's list works in the editable install the tests use and
    # is absent from a plain `pip install .` (the quick start): toolkit.relay once was.
    listed = set(
        re.findall(
            r'"([\w.]+)"',
            re.search(r"^packages = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M)[1],
        )
    )
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("toolkit", "proxy")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found - listed == set()
