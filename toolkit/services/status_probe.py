"""Health and traffic of a host's services, seen from the host itself. Runs ON the host.

``toolkit status`` sends this file's text to the virtualenv's Python (on stdin, within its one
probe), because services listen on the host's loopback. Standard library only. Reads the services
manifest, asks every health URL at once (status code and latency) and the proxy's ``/metrics``
(requests and errors per model), and prints one JSON object:
``{"health": {name: {"code": 200, "ms": 3.1}}, "traffic": {model: {"requests": n, "errors": n}}}``.

Usage: python - MANIFEST_PATH
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

TIMEOUT_S = 3.0
SAMPLE = re.compile(r"^(toolkit_proxy_(?:requests|errors)_total)\{(.*)\}\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def ask(url: str) -> dict:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (OSError, ValueError):
        code = 0  # nothing answers
    return {"code": code, "ms": round((time.monotonic() - started) * 1000, 1)}


def traffic(metrics_url: str) -> dict:
    """Requests and errors per model from the proxy's Prometheus text."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=TIMEOUT_S) as response:
            text = response.read(4 << 20).decode(errors="replace")
    except (OSError, ValueError):
        return {}
    found: dict = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match:
            continue
        labels = dict(LABEL.findall(match[2]))
        model = labels.get("model", "")
        counts = found.setdefault(model, {"requests": 0, "errors": 0})
        key = "requests" if match[1].startswith("toolkit_proxy_requests") else "errors"
        counts[key] += int(float(match[3]))
    return found


def main() -> int:
    with open(sys.argv[1]) as manifest:
        services = json.load(manifest)["services"]
    urls = {s["name"]: s["health_url"] for s in services if s.get("health_url")}
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        answers = dict(zip(urls, pool.map(ask, urls.values()), strict=True))
    result = {"health": answers, "traffic": {}}
    if "proxy" in urls:
        result["traffic"] = traffic(urls["proxy"].rsplit("/", 1)[0] + "/metrics")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
