"""A temporary site for the runtime tests: playbook, inventory, data dirs and cache, applied with
the real ``toolkit`` CLI. The workstation cache is seeded with the demo model (hard-linked, no
copy), so sources naming it are found there and not fetched from PyPI again."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import GEMMA_SHA256, processes_mentioning
from toolkit.models.store import ModelStore


class RuntimeSite:
    def __init__(self, root: Path, plays: list[dict[str, Any]], hosts: dict[str, dict] | None = None,
                 gguf: Path | None = None):  # fmt: skip
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data = root / "data"
        self.hosts = hosts or {"localhost": {}}
        self.playbook = root / "site.yml"
        self.write_playbook(plays)
        self.inventory = root / "hosts.yml"
        inventory = {
            name: {"ansible_connection": "local", "toolkit_data_dir": str(self.data_of(name)), **v}
            for name, v in self.hosts.items()
        }
        self.inventory.write_text(yaml.safe_dump({"all": {"hosts": inventory}}))
        self.env = {
            **os.environ,
            "TOOLKIT_CACHE_DIR": str(root / "cache"),
            "TOOLKIT_STATE_DIR": str(root / "state"),
        }
        if gguf is not None:
            ModelStore(root / "cache" / "models").adopt(gguf, GEMMA_SHA256)

    def data_of(self, host: str) -> Path:
        return self.data if len(self.hosts) == 1 else self.root / f"data-{host}"

    def write_playbook(self, plays: list[dict[str, Any]]) -> None:
        self.playbook.write_text(yaml.safe_dump(plays, sort_keys=False))

    def toolkit(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "toolkit.cli", *args, "-i", str(self.inventory)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )

    def apply(self, *extra: str, playbook: Path | None = None) -> subprocess.CompletedProcess:
        return self.toolkit("apply", str(playbook or self.playbook), *extra)

    def down(self, playbook: Path | None = None) -> subprocess.CompletedProcess:
        return self.toolkit("down", str(playbook or self.playbook))

    def processes(self) -> list[tuple[int, str]]:
        """Every process whose command line mentions this site's root."""
        return processes_mentioning(self.root)

    def kill_leftovers(self) -> None:
        for pid, _ in self.processes():  # should be none; never leave a daemon behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def recap(output: str, host: str = "localhost") -> tuple[int, int, int]:
    match = re.search(
        rf"^{re.escape(host)}\s+ok=(\d+)\s+(?:would change|changed)=(\d+)\s+failed=(\d+)",
        output,
        re.M,
    )
    assert match, output
    return int(match[1]), int(match[2]), int(match[3])
