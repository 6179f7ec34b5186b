"""Make one model usable by the host's Ollama: pull it, or import a GGUF toolkit placed. ON the host.

toolkit copies this file to the host and runs it with the virtualenv's Python, because Ollama
listens on the host's loopback. Standard library only.

``ollama_models.py tags URL`` prints Ollama's ``/api/tags`` answer (nothing when it does not answer).

``ollama_models.py ensure SPEC_JSON`` waits until Ollama answers ``/api/version``, then, unless
``/api/tags`` already lists the model (and, for an import, the record of what was imported
matches): ``POST /api/pull`` (``{"pull": name}``), or for an import (``{"file", "sha256",
"create"}``) ``HEAD /api/blobs/sha256:<hex>``, ``POST`` of the placed file when Ollama lacks the
blob (nothing is downloaded again), then ``POST /api/create``. It prints Ollama's NDJSON
progress lines as they come and ends with ``{"result": "present"|"pulled"|"imported"}``, or
``{"error": <Ollama's words>}`` and exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request


def say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class OllamaError(Exception):
    """Ollama's own message, passed on as it is."""


def call(url: str, body: dict | None = None, method: str | None = None, timeout: float = 30):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise OllamaError(error_text(exc.read(), exc.code)) from None


def error_text(raw: bytes, status: int) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace").strip() or f"HTTP {status}"


def tags(base: str) -> dict | None:
    try:
        with call(f"{base}/api/tags", timeout=5) as response:
            return json.load(response)
    except (OSError, ValueError, OllamaError):
        return None


def full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def wait_until_up(base: str, deadline_s: float) -> None:
    end, delay = time.monotonic() + deadline_s, 0.05
    while True:
        try:
            with call(f"{base}/api/version", timeout=5):
                return
        except (OSError, OllamaError):
            if time.monotonic() >= end:
                raise OllamaError(
                    f"Ollama did not answer {base}/api/version in {deadline_s:.0f} s"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def stream(response) -> None:
    """Pass Ollama's NDJSON progress on; an ``{"error": ...}`` line ends it as a failure."""
    last = None
    with response:
        for raw in response:
            line = raw.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "error" in event:
                raise OllamaError(str(event["error"]))
            say(event)
            last = event.get("status")
    if last != "success":
        raise OllamaError(f"the stream ended without success (last status: {last})")


def import_file(base: str, spec: dict) -> None:
    digest = f"sha256:{spec['sha256']}"
    try:
        with call(f"{base}/api/blobs/{digest}", method="HEAD"):
            present = True
    except OllamaError:
        present = False
    if not present:
        size = os.path.getsize(spec["file"])
        status = f"copying {digest[:19]} from the placed file"
        say({"status": status, "digest": digest, "total": size, "completed": 0})
        with open(spec["file"], "rb") as body:
            request = urllib.request.Request(
                f"{base}/api/blobs/{digest}",
                body,
                {"Content-Length": str(size), "Content-Type": "application/octet-stream"},
                method="POST",
            )
            try:
                urllib.request.urlopen(request, timeout=3600).close()
            except urllib.error.HTTPError as exc:
                raise OllamaError(error_text(exc.read(), exc.code)) from None
        say({"status": f"copied {digest[:19]}", "digest": digest, "total": size, "completed": size})
    create = {"model": spec["name"], "files": {spec["filename"]: digest}, "stream": True}
    create.update(spec.get("create") or {})
    stream(call(f"{base}/api/create", create, timeout=3600))


def ensure(spec: dict) -> str:
    base = spec["url"]
    wait_until_up(base, float(spec.get("deadline_s", 120)))
    known = {m.get("name") for m in (tags(base) or {}).get("models", [])}
    record = spec.get("record")
    recorded = None
    if record:
        try:
            with open(record) as file:
                recorded = file.read().strip()
        except OSError:
            pass
    if full_name(spec["name"]) in known and (not record or recorded == spec["record_value"]):
        return "present"
    if spec.get("pull"):
        stream(call(f"{base}/api/pull", {"model": spec["pull"], "stream": True}, timeout=3600))
        return "pulled"
    import_file(base, spec)
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record + ".partial", "w") as file:
        file.write(spec["record_value"] + "\n")
    os.replace(record + ".partial", record)
    return "imported"


def main(argv: list[str]) -> int:
    if argv[:1] == ["tags"]:
        found = tags(argv[1])
        if found is not None:
            print(json.dumps(found))
        return 0
    try:
        say({"result": ensure(json.loads(argv[1]))})
    except OllamaError as exc:
        say({"error": str(exc)})
        return 1
    except OSError as exc:
        say({"error": f"Ollama at {json.loads(argv[1])['url']}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
