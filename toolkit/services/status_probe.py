"""Health and traffic of a host's services, seen from the host itself. Runs ON the host.

``toolkit status`` sends this file's text to the virtualenv's Python (on stdin, within its one
probe), because services listen on the host's loopback. Standard library only. Reads the services
manifest, asks every health URL at once (status code and latency) and the proxy's ``/metrics``
(requests and errors per model; with the first key of the proxy's keys file, when the routes file
names one: read here, a key never travels), and prints one JSON object:
``{"health": {name: {"code": 200, "ms": 3.1}}, "traffic": {model: {"requests": n, "errors": n}}}``.

Usage: python - MANIFEST_PATH ROUTES_PATH
"""

from __future__ import annotations

import json
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

TIMEOUT_S = 3.0
SAMPLE = re.compile(r"^(toolkit_proxy_(?:requests|errors)_total)\{(.*)\}\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
KEYS_FILE = re.compile(r"^keys_file:\s*(.+?)\s*$", re.M)
LOOPBACK_TLS = ssl.create_default_context()  # a proxy with a certificate: loopback, no check
LOOPBACK_TLS.check_hostname = False
LOOPBACK_TLS.verify_mode = ssl.CERT_NONE


def ask(url: str) -> dict:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=LOOPBACK_TLS) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (OSError, ValueError):
        code = 0  # nothing answers
    return {"code": code, "ms": round((time.monotonic() - started) * 1000, 1)}


def proxy_key(routes_path: str) -> str | None:
    try:
        with open(routes_path, encoding="utf-8") as routes:
            named = KEYS_FILE.search(routes.read())
        if not named:
            return None
        path = json.loads(named[1]) if named[1].startswith('"') else named[1]
        with open(path, encoding="utf-8") as keys:
            for line in keys:
                if line.strip() and not line.lstrip().startswith("#"):
                    return line.strip()
    except (OSError, ValueError):
        return None
    return None


def traffic(metrics_url: str, key: str | None) -> dict:
    """Requests and errors per model from the proxy's Prometheus text."""
    request = urllib.request.Request(metrics_url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=LOOPBACK_TLS) as response:
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
        key = proxy_key(sys.argv[2]) if len(sys.argv) > 2 else None
        result["traffic"] = traffic(urls["proxy"].rsplit("/", 1)[0] + "/metrics", key)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
