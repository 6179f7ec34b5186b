"""The proxy against stand-in upstreams: routing, failover, broken streams, disconnects, reload,
auth, limits and load. Every server here is real and listens on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import aiohttp
import httpx
import openai
import pytest

from tests.conftest import REPO, free_port, stop_process, wait_http_ok
from tests.upstream_standin import ProxyProcess, StandIn, routes_for


@pytest.fixture
def start_proxy(tmp_path, proxy_server):
    """Start the proxy, with each HTTP server in turn (``proxy_server``)."""
    started: list[ProxyProcess] = []

    def start(routes, **kwargs) -> ProxyProcess:
        proxy = ProxyProcess(routes, tmp_path, server=proxy_server, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def chat(model: str = "m", stream: bool = False, **extra) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    return [
        line[len("data: ") :]
        for block in text.split("\n\n")
        for line in block.splitlines()
        if line.startswith("data: ")
    ]


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connections are refused


def test_alias_is_rewritten_and_system_folded(standin, start_proxy):
    routes = routes_for("m", standin.url, aliases=["alias"], capabilities={"system_role": False})
    proxy = start_proxy(routes)
    body = chat("alias")
    body["messages"].insert(0, {"role": "system", "content": "Be brief."})
    response = httpx.post(proxy.url + "/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "stand-in answer"
    received = standin.bodies[-1]
    assert received["model"] == "m"
    assert [m["role"] for m in received["messages"]] == ["user"]
    assert received["messages"][0]["content"] == "Be brief.\n\nhi"


def test_unknown_path_and_method_answer_in_openai_shape(standin, start_proxy):
    proxy = start_proxy(routes_for("m", standin.url))
    missing = httpx.get(proxy.url + "/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = httpx.get(proxy.url + "/v1/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_refused_connection_is_retried_on_another_backend(standin, start_proxy):
    proxy = start_proxy(routes_for("m", dead_url(), standin.url))
    for _ in range(5):
        response = httpx.post(proxy.url + "/v1/chat/completions", json=chat())
        assert response.status_code == 200
    assert standin.requests == 5


@pytest.fixture
def stalled_url():
    """A loopback address whose accept queue is full: a connection attempt there hangs (the
    SYNs are dropped) instead of being refused, as with a host that is down or firewalled."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(TimeoutError):  # the premise of the tests that use it
        probe.connect(("127.0.0.1", port))
    probe.close()
    yield f"http://127.0.0.1:{port}"
    for sock in (*fillers, listener):
        sock.close()


def test_connect_timeout_moves_on_to_another_backend(standin, start_proxy, stalled_url):
    # the stalled backend comes in by a reload, so no health check (every 60 s here) marks it
    # down before the request tries it: the request itself meets the connect timeout
    proxy = start_proxy({**routes_for("m", standin.url), "health_interval": 60})
    routes = routes_for("m", stalled_url, standin.url, timeouts={"connect": 0.3})
    proxy.write_routes({**routes, "health_interval": 60})
    proxy.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "routes reloaded" in proxy.log()), proxy.log()
    response = httpx.post(proxy.url + "/v1/chat/completions", json=chat(), timeout=30)
    assert response.status_code == 200
    assert standin.requests == 1
    metrics = httpx.get(proxy.url + "/metrics").text
    failed = f'toolkit_proxy_errors_total{{backend="{stalled_url}",kind="connect",model="m"}} 1.0'
    assert failed in metrics


def test_loading_backend_is_retried_and_rested(standin, start_proxy):
    with StandIn("loading", health_status=200) as loading:
        proxy = start_proxy(routes_for("m", loading.url, standin.url))
        for _ in range(4):
            response = httpx.post(proxy.url + "/v1/chat/completions", json=chat())
            assert response.status_code == 200
        assert loading.requests >= 1  # tried first, answered 503, so the request moved on
        assert standin.requests == 4
        metrics = httpx.get(proxy.url + "/metrics").text
        assert 'kind="upstream_5xx"' in metrics


def test_one_500_is_passed_through_three_in_a_row_rest_the_backend(standin, start_proxy):
    with StandIn("error") as failing:
        proxy = start_proxy({**routes_for("m", failing.url, standin.url), "health_interval": 60})
        url = proxy.url + "/v1/chat/completions"
        statuses = [httpx.post(url, json=chat(), timeout=30).status_code for _ in range(4)]
        assert statuses == [500, 500, 500, 200]  # the fourth went to the other backend
        assert (failing.requests, standin.requests) == (3, 1)
        health = httpx.get(proxy.url + "/health").json()
        assert health["models"]["m"] == {"healthy": 1, "backends": 2}
        rested = f'backend="{failing.url}",kind="upstream_5xx",model="m"}} 1.0'
        assert "toolkit_proxy_errors_total{" + rested in httpx.get(proxy.url + "/metrics").text


def test_no_healthy_backend_is_503_with_retry_after(start_proxy):
    proxy = start_proxy(routes_for("m", dead_url()))
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.code == "no_healthy_backend"
    health = httpx.get(proxy.url + "/health").json()
    assert health == {"status": "degraded", "models": {"m": {"healthy": 0, "backends": 1}}}


def test_streams_arrive_with_sse_headers(standin, start_proxy):
    proxy = start_proxy(routes_for("m", standin.url))
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=chat(stream=True)) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    contents = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert contents == [f"tok{i} " for i in range(5)]


def test_backend_dying_mid_stream_ends_with_error_event(start_proxy):
    with StandIn("die_mid_stream", chunks=6) as dying:
        proxy = start_proxy(routes_for("m", dying.url))
        url = proxy.url + "/v1/chat/completions"
        with httpx.stream("POST", url, json=chat(stream=True), timeout=30) as r:
            events = sse_events(r.read().decode())
        assert len(events) == 4  # three chunks, then the error
        assert "error" in json.loads(events[-1])
        health = httpx.get(proxy.url + "/health").json()
        assert health["models"]["m"]["healthy"] == 0  # a backend that breaks off is rested


def test_backend_dying_mid_stream_raises_in_openai_client(start_proxy):
    with StandIn("die_mid_stream", chunks=6) as dying:
        proxy = start_proxy(routes_for("m", dying.url))
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        received = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received.append(chunk.choices[0].delta.content)
        assert received == ["tok0 ", "tok1 ", "tok2 "]
        assert "broke off" in info.value.message


def test_client_disconnect_closes_upstream_request(start_proxy):
    with StandIn(chunks=500, delay=0.02) as slow:
        proxy = start_proxy(routes_for("m", slow.url))
        url = proxy.url + "/v1/chat/completions"
        with httpx.stream("POST", url, json=chat(stream=True), timeout=30) as r:
            chunks = r.iter_bytes()
            next(chunks)
            next(chunks)
        # the client has closed its connection; the stand-in must see its request closed soon
        assert slow.client_closed.wait(1.0), "the upstream request was still open after 1 s"


def test_client_giving_up_on_a_completion_closes_upstream_request(standin, start_proxy):
    proxy = start_proxy(routes_for("m", standin.url))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + "/v1/chat/completions", json=chat(standin_stall=30), timeout=0.5)
    assert standin.client_closed.wait(1.0), "the upstream request was still open after 1 s"


def test_first_byte_timeout_moves_on_then_gives_up(standin, start_proxy):
    routes = routes_for("m", standin.url, timeouts={"first_byte": 0.3})
    proxy = start_proxy(routes)
    response = httpx.post(
        proxy.url + "/v1/chat/completions", json=chat(standin_stall=5), timeout=30
    )
    assert response.status_code == 503
    assert "no response within" in response.json()["error"]["message"]


# The usual request is answered on callbacks alone when a keep-alive connection to its backend
# is idle (``upstream._Exchange``); whatever else happens to it goes on in a task. Each test
# below first makes one request, which leaves such a connection, so the next starts that way.


def warm_up(proxy: ProxyProcess) -> None:
    response = httpx.post(proxy.url + "/v1/chat/completions", json=chat(), timeout=30)
    assert response.status_code == 200


def test_warm_503_is_retried_on_another_backend(start_proxy):
    with StandIn() as first, StandIn() as second:
        proxy = start_proxy({**routes_for("m", first.url, second.url), "health_interval": 60})
        warm_up(proxy)
        assert (first.requests, second.requests) == (1, 0)  # the first is tried first
        first.mode = "loading"
        response = httpx.post(proxy.url + "/v1/chat/completions", json=chat(), timeout=30)
        assert response.status_code == 200
        assert (first.requests, second.requests) == (2, 1)
        assert 'kind="upstream_5xx"' in httpx.get(proxy.url + "/metrics").text


def test_warm_first_byte_timeout_moves_on(start_proxy):
    with StandIn() as first, StandIn() as second:
        routes = routes_for("m", first.url, second.url, timeouts={"first_byte": 0.3})
        proxy = start_proxy({**routes, "health_interval": 60})
        warm_up(proxy)
        first.stall = 5
        response = httpx.post(proxy.url + "/v1/chat/completions", json=chat(), timeout=30)
        assert response.status_code == 200
        assert (first.requests, second.requests) == (2, 1)
        assert first.client_closed.wait(1.0), "the timed-out request was still open after 1 s"


def test_warm_client_giving_up_closes_upstream_request(standin, start_proxy):
    proxy = start_proxy(routes_for("m", standin.url))
    warm_up(proxy)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + "/v1/chat/completions", json=chat(standin_stall=30), timeout=0.5)
    assert standin.client_closed.wait(1.0), "the upstream request was still open after 1 s"
    assert wait_until(lambda: '"status":499' in proxy.log()), proxy.log()
    warm_up(proxy)  # and the proxy goes on answering


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_stream_that_comes_in_one_piece_is_relayed_whole(standin, start_proxy, warm):
    proxy = start_proxy(routes_for("m", standin.url))
    if warm:
        warm_up(proxy)
    body = chat(stream=True, standin_chunks=3, standin_in_one_piece=True)
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]" and len(events) == 4


def test_warm_stream_is_relayed_whole(standin, start_proxy):
    proxy = start_proxy(routes_for("m", standin.url))
    warm_up(proxy)
    body = chat(stream=True, standin_chunks=4, standin_delay=0.05)
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=30) as r:
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]" and len(events) == 5


def test_idle_timeout_ends_stream_with_error_event(standin, start_proxy):
    proxy = start_proxy(routes_for("m", standin.url, timeouts={"idle": 0.3}))
    body = chat(stream=True, standin_chunks=3, standin_delay=3)
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=30) as r:
        events = sse_events(r.read().decode())
    assert json.loads(events[-1])["error"]["code"] == "timeout"


def test_request_body_limit(standin, start_proxy):
    routes = {**routes_for("m", standin.url), "max_body_bytes": 1000}
    proxy = start_proxy(routes)
    response = httpx.post(
        proxy.url + "/v1/chat/completions", json=chat(padding="x" * 2000), timeout=30
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_fewest_in_flight_spreads_streams(start_proxy):
    with StandIn(chunks=20, delay=0.05) as first, StandIn(chunks=20, delay=0.05) as second:
        proxy = start_proxy(routes_for("m", first.url, second.url))

        def stream() -> None:
            httpx.post(proxy.url + "/v1/chat/completions", json=chat(stream=True), timeout=30)

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert (first.requests, second.requests) == (2, 2)


def test_api_keys(standin, start_proxy, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nfile-key\n")
    routes = {**routes_for("m", standin.url), "keys_file": str(keys_file)}
    proxy = start_proxy(routes, env={"TOOLKIT_API_KEYS": "env-key"})
    for key in ("file-key", "env-key"):
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
        assert [m.id for m in client.models.list()] == ["m"]
    wrong = openai.OpenAI(base_url=proxy.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(proxy.url + "/health").status_code == 200  # public


def test_refuses_open_proxy_on_public_address(standin, tmp_path, proxy_server):
    routes = tmp_path / "routes.yml"
    routes.write_text(f"models:\n  m:\n    backends: [{{url: '{standin.url}'}}]\n")
    env = {k: v for k, v in os.environ.items() if k != "TOOLKIT_API_KEYS"}
    argv = [sys.executable, "-m", "proxy", "--routes", str(routes), "--host", "0.0.0.0"]
    argv += ["--server", proxy_server]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--allow-unauthenticated" in result.stderr


@pytest.mark.parametrize("command", [["-m", "proxy"], ["-m", "toolkit.cli", "proxy"]])
def test_bad_routes_file_names_file_and_line(tmp_path, command):
    routes = tmp_path / "routes.yml"
    routes.write_text("models:\n  m:\n    backends:\n      - {url: 'ftp://x'}\n")
    argv = [sys.executable, *command, "--routes", str(routes)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{routes}:4:" in result.stderr


def test_reload_during_stream_keeps_the_stream(start_proxy):
    with StandIn(chunks=20, delay=0.05) as slow:
        proxy = start_proxy(routes_for("m", slow.url))
        result: dict[str, list[str]] = {}

        def stream() -> None:
            url = proxy.url + "/v1/chat/completions"
            with httpx.stream("POST", url, json=chat(stream=True), timeout=30) as r:
                result["events"] = sse_events(r.read().decode())

        reader = threading.Thread(target=stream)
        reader.start()
        assert slow.stream_started.wait(10)
        routes = routes_for("m", slow.url)
        routes["models"]["other"] = {"backends": [{"url": slow.url}]}
        proxy.write_routes(routes)
        os.kill(proxy.process.pid, signal.SIGHUP)
        reader.join(timeout=30)
        assert len(result["events"]) == 21 and result["events"][-1] == "[DONE]"
        ids = [m["id"] for m in httpx.get(proxy.url + "/v1/models").json()["data"]]
        assert ids == ["m", "other"]


def test_reload_on_change_and_bad_file_kept_out(standin, start_proxy):
    proxy = start_proxy(routes_for("m", standin.url))

    def model_ids() -> list[str]:
        return [m["id"] for m in httpx.get(proxy.url + "/v1/models").json()["data"]]

    def wait_for(expected: list[str]) -> list[str]:
        for _ in range(100):  # the proxy polls the file's mtime every second
            ids = model_ids()
            if ids == expected:
                break
            time.sleep(0.1)
        return ids

    proxy.write_routes(routes_for("n", standin.url))
    assert wait_for(["n"]) == ["n"]
    proxy.routes_path.write_text("models: [oops\n")
    for _ in range(30):
        if "routes not reloaded" in proxy.log():
            break
        time.sleep(0.1)
    assert "routes.yml:" in proxy.log()
    assert model_ids() == ["n"]


def wait_until(condition, seconds: float = 10.0) -> bool:
    """Poll ``condition`` every 0.05 s for at most ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_sighup_alone_reloads_the_routes(standin, start_proxy):
    """The file is rewritten in place with its size and mtime kept, so the mtime poll cannot see
    it: only the SIGHUP makes the proxy read it."""
    proxy = start_proxy(routes_for("m", standin.url))
    stat = proxy.routes_path.stat()
    text = proxy.routes_path.read_text()
    with open(proxy.routes_path, "r+") as same_inode:
        same_inode.write(text.replace("  m:", "  n:"))
    os.utime(proxy.routes_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    def ids() -> list[str]:
        return [m["id"] for m in httpx.get(proxy.url + "/v1/models").json()["data"]]

    time.sleep(2.5)  # two and a half mtime polls
    assert ids() == ["m"]
    proxy.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: ids() == ["n"]), proxy.log()


def test_a_reload_that_drops_every_key_is_refused_beyond_loopback(standin, start_proxy, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("the-key\n")
    routes = {**routes_for("m", standin.url), "keys_file": str(keys_file)}
    proxy = start_proxy(routes, args=("--host", "0.0.0.0"))  # traffic still goes to 127.0.0.1
    keys_file.write_text("")
    assert wait_until(lambda: "leaves no API key" in proxy.log()), proxy.log()
    assert httpx.get(proxy.url + "/v1/models").status_code == 401  # still closed
    keyed = httpx.get(proxy.url + "/v1/models", headers={"Authorization": "Bearer the-key"})
    assert keyed.status_code == 200


def test_each_runtime_is_checked_at_its_own_liveness_path(start_proxy):
    expected = {"llamacpp": "/health", "ollama": "/api/version", "llamaedge": "/v1/models"}
    with StandIn() as llamacpp, StandIn() as ollama, StandIn() as llamaedge:
        standins = {"llamacpp": llamacpp, "ollama": ollama, "llamaedge": llamaedge}
        models = {}
        for runtime, upstream in standins.items():
            models.update(routes_for(runtime, upstream.url, runtime=runtime)["models"])
        start_proxy({"models": models, "health_interval": 0.2})
        assert wait_until(lambda: all(len(s.checked) >= 2 for s in standins.values()))
        for runtime, upstream in standins.items():
            assert set(upstream.checked) - {"/slots"} == {expected[runtime]}, runtime


def test_every_request_gets_one_json_access_log_line(standin, start_proxy):
    proxy = start_proxy(routes_for("m", standin.url))
    assert httpx.post(proxy.url + "/v1/chat/completions", json=chat()).status_code == 200
    assert httpx.post(proxy.url + "/v1/chat/completions", json=chat("nope")).status_code == 404

    def lines() -> list[dict]:
        return [json.loads(ln) for ln in proxy.log().splitlines() if ln.startswith('{"ts"')]

    assert wait_until(lambda: len(lines()) >= 2), proxy.log()
    ok = next(line for line in lines() if line["status"] == 200)
    assert ok["path"] == "/v1/chat/completions" and ok["model"] == "m"
    assert ok["backend"] == standin.url and ok["tokens"] > 0
    assert 0 < ok["ttfb_ms"] <= ok["latency_ms"]
    assert any(line["status"] == 404 and line["model"] == "nope" for line in lines())


def test_200_concurrent_streams(start_proxy):
    chunks = 20
    with StandIn(chunks=chunks, delay=0.01) as upstream:
        proxy = start_proxy(routes_for("m", upstream.url), args=("--no-access-log",))

        async def one(session: aiohttp.ClientSession) -> list[str]:
            url = proxy.url + "/v1/chat/completions"
            async with session.post(url, json=chat(stream=True)) as response:
                assert response.status == 200
                return sse_events((await response.read()).decode())

        async def run_all() -> list[list[str] | BaseException]:
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                return await asyncio.gather(
                    *(one(session) for _ in range(200)), return_exceptions=True
                )

        results = asyncio.run(run_all())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    expected = [f"tok{i} " for i in range(chunks)]
    for events in results:
        assert events[-1] == "[DONE]"
        assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == expected


def test_runs_from_a_plain_copy_without_toolkit(standin, tmp_path, proxy_server):
    """On a host the proxy is a copy of proxy/ in a virtualenv: it must not need toolkit."""
    import shutil

    shutil.copytree(
        REPO / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    routes = tmp_path / "routes.yml"
    routes.write_text(f"models:\n  m:\n    backends: [{{url: '{standin.url}'}}]\n")
    port = free_port()
    block_toolkit = (
        "import runpy, sys; sys.modules['toolkit'] = None; sys.path[:0] = ['.'];"
        "runpy.run_module('proxy', run_name='__main__', alter_sys=True)"
    )
    argv = [sys.executable, "-I", "-c", block_toolkit]
    argv += ["--routes", str(routes), "--port", str(port), "--server", proxy_server]
    with open(tmp_path / "log", "wb") as log:
        process = subprocess.Popen(
            argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", deadline_s=30, proc=process)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat())
        assert response.status_code == 200
    finally:
        stop_process(process)
