"""Wait until services answer, then prove the endpoint with one real request. Runs ON the host.

toolkit copies this file to the host and runs it with the virtualenv's Python, because services
listen on the host's loopback. Standard library only. Prints one JSON object:
``{"health": {url: status}, "verify": {model: {kind, latency_s, tokens, tokens_per_s, text}}}``;
exits 1 when a service is not healthy by the deadline or a verification request fails.

Each model is proved with the request its role implies: ``chat`` (/chat/completions),
``completion`` (/completions) or ``embedding`` (/embeddings, which must return a vector).

While it waits it can also watch the service manager (``watch``): a service that exits (its
state turns crashed or restarting, its restart count grows, or its pid changes) ends the wait at
once, with its state, last exit and the last lines of its log under ``"failed"``; at the
deadline, each service still not healthy is under ``"waiting"`` with its last log line.

Usage: health_check.py SPEC_JSON   with SPEC = {"urls": [...], "deadline_s": 300,
        "verify": [{"url": "http://127.0.0.1:8080/v1", "model": "m", "kind": "chat"}],
        "watch": {"script": SH, "services": {url: name}, "tails": {name: SH}}}
where ``script`` prints one tab-separated line per service, ``@svc NAME STATE PID UPTIME
RESTARTS EXIT`` (see toolkit/services/manager.py), and each tail script prints a log's last lines.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

# Every URL here is on the host's own loopback (its services, its proxy): the question is whether
# they answer, not who they are, so a proxy's certificate (self-signed or for its public name)
# is not checked here. Clients elsewhere check it against the CA file the recap names.
LOOPBACK_TLS = ssl.create_default_context()
LOOPBACK_TLS.check_hostname = False
LOOPBACK_TLS.verify_mode = ssl.CERT_NONE
AUTHORIZATION: dict[str, str] = {}  # set from the proxy's keys file when it has one


def use_key_from(keys_file: str | None) -> None:
    """Send the first key of the proxy's keys file (read here, on the host: a key never travels
    on a command line)."""
    if not keys_file:
        return
    with open(keys_file, encoding="utf-8") as lines:
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                AUTHORIZATION["Authorization"] = f"Bearer {line.strip()}"
                return


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5, context=LOOPBACK_TLS) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code  # llama.cpp answers 503 while the model loads
    except (OSError, ValueError):
        return 0  # not listening yet


EXITED_STATES = ("crashed", "restarting")
STOPPED_POLLS = 3  # "stopped" this many checks in a row counts as exited (not a slow start)
WATCH_EVERY_S = 1.0


def run_shell(script: str, timeout: float = 20) -> str:
    try:
        return subprocess.run(
            ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=timeout
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def read_states(script: str) -> dict[str, dict]:
    states = {}
    for line in run_shell(script).splitlines():
        fields = line.split("\t")
        if len(fields) >= 7 and fields[0] == "@svc":
            name, state, pid, _, restarts, last_exit = fields[1:7]
            states[name] = {"state": state, "pid": pid, "restarts": restarts,
                            "exit": "" if last_exit == "-" else last_exit}  # fmt: skip
    return states


class Watcher:
    """Tells which services exited since the wait began, from the manager's state lines."""

    def __init__(self, script: str):
        self.script = script
        self.first: dict[str, dict] = {}
        self.stopped: dict[str, int] = {}
        self.checked = 0.0

    def exited(self) -> dict[str, dict]:
        if time.monotonic() - self.checked < WATCH_EVERY_S:
            return {}
        self.checked = time.monotonic()
        found = {}
        for name, now in read_states(self.script).items():
            before = self.first.setdefault(name, dict(now))
            if not before["pid"].isdigit():
                before["pid"] = now["pid"]  # its first pid (it had none while starting)
            self.stopped[name] = self.stopped.get(name, 0) + 1 if now["state"] == "stopped" else 0
            restarted = (
                now["restarts"].isdigit()
                and before["restarts"].isdigit()
                and int(now["restarts"]) > int(before["restarts"])
            )
            new_pid = (
                now["pid"].isdigit() and before["pid"].isdigit() and now["pid"] != before["pid"]
            )
            if (
                now["state"] in EXITED_STATES
                or restarted
                or new_pid
                or self.stopped[name] >= STOPPED_POLLS
            ):
                found[name] = now
        return found


def log_lines(script: str) -> list[str]:
    lines = run_shell(script).splitlines()
    if lines and lines[0].startswith("@cursor "):
        lines = lines[1:]
    return [line for line in lines if not line.startswith("-- cursor: ")]


def wait_healthy(
    urls: list[str], deadline_s: float, watcher: Watcher | None = None
) -> tuple[dict[str, int], dict[str, dict]]:
    """Poll every URL with exponential backoff (50 ms .. 1 s) until all are 200 or time is up,
    or (with a watcher) until a service has exited: then also which ones."""
    end = time.monotonic() + deadline_s
    delay = 0.05
    last = {url: 0 for url in urls}
    while True:
        for url in urls:
            if last[url] != 200:
                last[url] = status_of(url)
        if all(code == 200 for code in last.values()) or time.monotonic() >= end:
            return last, {}
        exited = watcher.exited() if watcher else {}
        if exited:
            return last, exited
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def verify_once(url: str, model: str, kind: str, deadline: float) -> dict:
    """One request of ``kind``; a 503 with Retry-After (the proxy's backend is still in its cool-off
    after a restart) is retried after that many seconds while the deadline allows."""
    while True:
        try:
            return REQUESTS[kind](url, model)
        except urllib.error.HTTPError as exc:
            wait = exc.headers.get("Retry-After", "") if exc.code == 503 else ""
            if not wait.isdigit() or time.monotonic() + int(wait) >= deadline:
                raise
            exc.close()
            time.sleep(max(int(wait), 0.2))


def _post(url: str, body: dict) -> tuple[dict, float]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **AUTHORIZATION}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=120, context=LOOPBACK_TLS) as response:
        reply = json.load(response)
    return reply, time.monotonic() - started


def _answer(reply: dict, latency: float, text: str, kind: str) -> dict:
    if not text.strip():
        raise ValueError("empty answer")
    tokens = int(reply.get("usage", {}).get("completion_tokens") or 0)
    return {
        "kind": kind,
        "latency_s": round(latency, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / latency, 1) if latency > 0 else 0.0,
        "text": text[:200],
    }


def _chat(url: str, model: str) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 8,  # enough to prove it answers; a loaded CPU makes ~1 token/s
        "temperature": 0,
    }
    reply, latency = _post(f"{url}/chat/completions", body)
    return _answer(reply, latency, reply["choices"][0]["message"].get("content") or "", "chat")


def _completion(url: str, model: str) -> dict:
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 16,
            "temperature": 0}  # fmt: skip
    reply, latency = _post(f"{url}/completions", body)
    return _answer(reply, latency, reply["choices"][0].get("text") or "", "completion")


def _embedding(url: str, model: str) -> dict:
    reply, latency = _post(f"{url}/embeddings", {"model": model, "input": "hello"})
    vector = reply["data"][0]["embedding"]
    if not isinstance(vector, list) or not vector or not isinstance(vector[0], (int, float)):
        raise ValueError(f"no embedding vector in the answer: {str(reply)[:200]}")
    return {"kind": "embedding", "latency_s": round(latency, 3), "tokens": 0,
            "tokens_per_s": 0.0, "text": f"{len(vector)} dimensions"}  # fmt: skip


REQUESTS = {"chat": _chat, "completion": _completion, "embedding": _embedding}


def main() -> int:
    spec = json.loads(sys.argv[1])
    use_key_from(spec.get("keys_file"))
    deadline_s = float(spec.get("deadline_s", 300))
    deadline = time.monotonic() + deadline_s
    watch = spec.get("watch") or {}
    watcher = Watcher(watch["script"]) if watch.get("script") else None
    health, exited = wait_healthy(spec["urls"], deadline_s, watcher)
    result: dict = {"health": health}
    tails = watch.get("tails", {})
    if exited:
        result["failed"] = {
            name: {**state, "log": log_lines(tails[name]) if name in tails else []}
            for name, state in exited.items()
        }
    elif watch:
        names = watch.get("services", {})
        result["waiting"] = {
            names.get(url, url): {
                "code": code,
                "log": log_lines(tails.get(names.get(url), ""))[-1:],
            }
            for url, code in health.items()
            if code != 200
        }
    ok = all(code == 200 for code in result["health"].values()) and not exited
    result["verify"] = {}
    if ok:
        for item in spec.get("verify", []):
            try:
                result["verify"][item["model"]] = verify_once(
                    item["url"], item["model"], item.get("kind", "chat"), deadline
                )
            except (OSError, ValueError, KeyError, IndexError) as exc:
                detail = exc.read().decode(errors="replace")[:300] if hasattr(exc, "read") else ""
                result["verify"][item["model"]] = {"error": f"{exc} {detail}".strip()}
                ok = False
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
