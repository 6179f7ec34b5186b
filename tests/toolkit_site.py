"""A throwaway toolkit site for the install tests: playbook, inventory, cache and state dirs, and
the real CLI run as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import GEMMA_SHA256, REPO

GEMMA = "gemma-3-270m"


def recap(output: str, host: str) -> tuple[int, int, int]:
    """ok, changed, failed of ``host`` in the recap."""
    match = re.search(
        rf"^{re.escape(host)}\s+ok=(\d+)\s+(?:would change|changed)=(\d+)\s+failed=(\d+)",
        output,
        re.M,
    )
    assert match, output
    return int(match[1]), int(match[2]), int(match[3])


class ToolkitSite:
    def __init__(self, root: Path, host: str, host_vars: dict, runtime: dict, model: Path,
                 proxy_port: int, args: dict | None = None):  # fmt: skip
        self.root = root
        self.host = host
        root.mkdir(parents=True, exist_ok=True)
        self.playbook = root / "site.yml"
        self.inventory = root / "hosts.yml"
        self.proxy_port = proxy_port
        self.write(runtime, model, args)
        self.inventory.write_text(yaml.safe_dump({"all": {"hosts": {host: host_vars}}}))
        self.env = {
            **os.environ,
            "TOOLKIT_CACHE_DIR": str(root / "cache"),
            "TOOLKIT_STATE_DIR": str(root / "state"),
        }

    def write(self, runtime: dict, model: Path, args: dict | None = None) -> None:
        play = {
            "name": "install test",
            "hosts": "all",
            "runtimes": {"llamacpp": runtime},
            "models": [
                {
                    "name": GEMMA,
                    "runtime": "llamacpp",
                    "source": {"path": str(model)},
                    "sha256": GEMMA_SHA256,
                    "args": args if args is not None else {"ctx_size": 2048, "parallel": 1},
                }
            ],
            "proxy": {"port": self.proxy_port},
        }
        self.playbook.write_text(yaml.safe_dump([play], sort_keys=False))

    def toolkit(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "toolkit.cli", *args, "-i", str(self.inventory)],
            capture_output=True,
            text=True,
            env={**self.env, "PYTHONPATH": str(REPO)},
            timeout=timeout,
            cwd=self.root,
        )

    def apply(self, *extra: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return self.toolkit("apply", str(self.playbook), *extra, timeout=timeout)

    def down(self) -> subprocess.CompletedProcess:
        return self.toolkit("down", str(self.playbook))
