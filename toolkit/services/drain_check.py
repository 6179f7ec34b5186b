"""Wait until a model's old engine may stop: the proxy routes elsewhere, and it holds nothing.

Runs ON the host, with the virtualenv's Python (standard library only), after toolkit pointed the
routes file at the new engines. Two waits, both bounded by ``deadline_s``:

1. the proxy has reloaded its routes: its /metrics lists every new backend and none of the old
   ones, ``CONFIRMATIONS`` answers in a row (with several proxy workers, each answer is one
   worker's; each reloads within a second of the file's change);
2. every old engine has held no request (the sum of its ``gauges`` in its /metrics is 0) for
   ``quiet_s`` without a break. An engine that does not answer holds nothing.

Prints one JSON object: ``{"reloaded_s": s | null, "drained_s": s, "busy": n}`` where ``busy`` is
what the old engines still held at the deadline (0 when they drained).

Usage: drain_check.py SPEC_JSON   with SPEC = {"proxy_metrics": URL, "keys_file": PATH | null,
       "new": [backend URL], "old": [backend URL], "engines": [{"url": URL, "gauges": [NAME]}],
       "quiet_s": 3, "deadline_s": 120}
"""

from __future__ import annotations

import contextlib
import json
import ssl
import sys
import time
import urllib.error
import urllib.request

POLL_S = 0.2
CONFIRMATIONS = 3
LOOPBACK_TLS = ssl.create_default_context()  # the host's own proxy: whether it answers, not who
LOOPBACK_TLS.check_hostname = False
LOOPBACK_TLS.verify_mode = ssl.CERT_NONE


def first_key(keys_file: str | None) -> str | None:
    if not keys_file:
        return None
    try:
        with open(keys_file, encoding="utf-8") as lines:
            for line in lines:
                if line.strip() and not line.lstrip().startswith("#"):
                    return line.strip()
    except OSError:
        return None
    return None


def fetch(url: str, key: str | None = None) -> str | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=LOOPBACK_TLS) as response:
            return response.read().decode(errors="replace")
    except (OSError, ValueError, urllib.error.HTTPError):
        return None


def routed_backends(metrics: str) -> set[str]:
    """The backends the proxy's current routes hold, from its in-flight gauge's labels."""
    found = set()
    for line in metrics.splitlines():
        if line.startswith("toolkit_proxy_in_flight_requests{"):
            start = line.find('backend="')
            if start >= 0:
                rest = line[start + len('backend="') :]
                found.add(rest[: rest.find('"')])
    return found


def gauge_sum(metrics: str, names: list[str]) -> int:
    total = 0.0
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name.split("{")[0] in names:
            with contextlib.suppress(ValueError, IndexError):
                total += float(value.split()[0])
    return int(total)


def wait_reloaded(spec: dict, key: str | None, deadline: float) -> bool:
    new, old = set(spec.get("new", [])), set(spec.get("old", []))
    url, seen = spec.get("proxy_metrics"), 0
    while url and time.monotonic() < deadline:
        text = fetch(url, key)
        routed = routed_backends(text) if text is not None else None
        seen = seen + 1 if routed is not None and new <= routed and not old & routed else 0
        if seen >= CONFIRMATIONS:
            return True
        time.sleep(POLL_S)
    return not url


def held(engines: list[dict]) -> int:
    busy = 0
    for engine in engines:
        text = fetch(engine["url"])
        if text is not None:
            busy += gauge_sum(text, engine.get("gauges", []))
    return busy


def main() -> int:
    spec = json.loads(sys.argv[1])
    started = time.monotonic()
    deadline = started + float(spec.get("deadline_s", 120))
    quiet_s = float(spec.get("quiet_s", 3))
    reloaded = wait_reloaded(spec, first_key(spec.get("keys_file")), deadline)
    reloaded_s = round(time.monotonic() - started, 3) if reloaded else None
    engines = spec.get("engines", [])
    idle_since, busy = None, 0
    while True:
        now = time.monotonic()
        busy = held(engines)
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        if idle_since is not None and now - idle_since >= quiet_s:
            busy = 0
            break
        if now >= deadline:
            break
        time.sleep(POLL_S)
    print(json.dumps({
        "reloaded_s": reloaded_s,
        "drained_s": round((idle_since or time.monotonic()) - started, 3),
        "busy": busy,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
