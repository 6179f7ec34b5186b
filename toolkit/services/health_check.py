"""Wait until services answer, then prove the endpoint with one real request. Runs ON the host.

toolkit copies this file to the host and runs it with the virtualenv's Python, because services
listen on the host's loopback. Standard library only. Prints one JSON object:
``{"health": {url: status}, "verify": {model: {latency_s, tokens, tokens_per_s, text}}}``;
exits 1 when a service is not healthy by the deadline or a verification request fails.

Usage: health_check.py SPEC_JSON   with SPEC = {"urls": [...], "deadline_s": 300,
        "verify": [{"url": "http://127.0.0.1:8080/v1/chat/completions", "model": "m"}]}
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code  # llama.cpp answers 503 while the model loads
    except (OSError, ValueError):
        return 0  # not listening yet


def wait_healthy(urls: list[str], deadline_s: float) -> dict[str, int]:
    """Poll every URL with exponential backoff (50 ms .. 1 s) until all are 200 or time is up."""
    end = time.monotonic() + deadline_s
    delay = 0.05
    last = {url: 0 for url in urls}
    while True:
        for url in urls:
            if last[url] != 200:
                last[url] = status_of(url)
        if all(code == 200 for code in last.values()) or time.monotonic() >= end:
            return last
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def chat_once(url: str, model: str, deadline: float) -> dict:
    """One chat request; a 503 with Retry-After (the proxy's backend is still in its cool-off
    after a restart) is retried after that many seconds while the deadline allows."""
    while True:
        try:
            return _chat(url, model)
        except urllib.error.HTTPError as exc:
            wait = exc.headers.get("Retry-After", "") if exc.code == 503 else ""
            if not wait.isdigit() or time.monotonic() + int(wait) >= deadline:
                raise
            exc.close()
            time.sleep(max(int(wait), 0.2))


def _chat(url: str, model: str) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 32,
        "temperature": 0,
    }
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as response:
        reply = json.load(response)
    latency = time.monotonic() - started
    tokens = int(reply.get("usage", {}).get("completion_tokens") or 0)
    text = reply["choices"][0]["message"].get("content") or ""
    if not text.strip():
        raise ValueError("empty answer")
    return {
        "latency_s": round(latency, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / latency, 1) if latency > 0 else 0.0,
        "text": text[:200],
    }


def main() -> int:
    spec = json.loads(sys.argv[1])
    deadline_s = float(spec.get("deadline_s", 300))
    deadline = time.monotonic() + deadline_s
    result: dict = {"health": wait_healthy(spec["urls"], deadline_s)}
    ok = all(code == 200 for code in result["health"].values())
    result["verify"] = {}
    if ok:
        for item in spec.get("verify", []):
            try:
                result["verify"][item["model"]] = chat_once(item["url"], item["model"], deadline)
            except (OSError, ValueError, KeyError, IndexError) as exc:
                detail = exc.read().decode(errors="replace")[:300] if hasattr(exc, "read") else ""
                result["verify"][item["model"]] = {"error": f"{exc} {detail}".strip()}
                ok = False
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
