"""``toolkit serve FILE``: one model on this machine with the proxy in front, no playbook to write.

Ollama's ``run`` habit, done the toolkit way: serve writes the playbook it applies into toolkit's
state dir (so ``toolkit apply`` or ``toolkit down`` work on it later, and it can be edited into a
real one), applies it with the usual engine (checksum, services, health, a verified request),
prints the endpoint and waits. Ctrl-C or SIGTERM stops what it started; files and models stay.

The model is a local file (hashed here) or ``hf:org/repo/path/to/file.gguf`` (the Hub's own
sha256 of the file, from its metadata, pins it).
"""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path

import yaml

from toolkit.errors import ToolkitError
from toolkit.models.store import hash_file
from toolkit.runtimes import DEFAULT
from toolkit.workstation import state_dir

_MODEL_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def model_name(filename: str) -> str:
    stem = Path(filename).name.removesuffix(".gguf")
    return (_MODEL_NAME.sub("-", stem).strip("-._") or "model")[:64].lower()


def source_for(target: str, sha256: str | None) -> tuple[dict, str, str]:
    """(source, sha256, file name) for a path or an ``hf:org/repo/file`` target."""
    if target.startswith("hf:"):
        parts = target[3:].split("/")
        if len(parts) < 3:
            raise ToolkitError(f"{target}: expected hf:org/repo/path/to/file.gguf")
        repo, file = "/".join(parts[:2]), "/".join(parts[2:])
        return {"hf": repo, "file": file}, sha256 or _hub_sha256(repo, file), file
    path = Path(target).expanduser().resolve()
    if not path.is_file():
        raise ToolkitError(f"{target}: no such file")
    return {"path": str(path)}, sha256 or hash_file(path)[0], path.name


def _hub_sha256(repo: str, file: str) -> str:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        etag = get_hf_file_metadata(hf_hub_url(repo, file)).etag or ""
    except Exception as exc:  # the hub's errors are many; one line says enough
        raise ToolkitError(f"hf:{repo}/{file}: {str(exc).splitlines()[0]}") from None
    etag = etag.strip('"').removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", etag):
        raise ToolkitError(f"hf:{repo}/{file}: the Hub gives no sha256 for it; pass --sha256")
    return etag


def write_playbook(target: str, port: int, ctx_size: int, sha256: str | None,
                   data_dir: str | None, runtime: str = DEFAULT) -> Path:  # fmt: skip
    source, digest, filename = source_for(target, sha256)
    name = model_name(filename)
    play = {
        "name": f"serve {name}",
        "hosts": "localhost",
        "vars": {"toolkit_data_dir": data_dir or f"~/.local/share/toolkit/serve/{name}"},
        "runtimes": {runtime: {"install": "auto"}},
        "models": [{"name": name, "runtime": runtime, "source": source, "sha256": digest,
                    "args": {"ctx_size": ctx_size}}],
        "proxy": {"port": port},
    }  # fmt: skip
    path = state_dir() / "serve" / f"{name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Written by `toolkit serve {target}`; `toolkit apply` or `toolkit down` it like any "
        "playbook.\n" + yaml.safe_dump([play], sort_keys=False)
    )
    return path


def wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(3600):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
