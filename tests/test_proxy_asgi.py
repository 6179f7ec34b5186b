"""The proxy as an ASGI app outside ``python -m proxy``: run by uvicorn's own command line
(``uvicorn proxy.asgi:app`` with ``TOOLKIT_ROUTES``, and ``--factory``), and mounted under a
prefix in another Starlette app, which passes no lifespan events to it. Real uvicorn processes
on loopback, a stand-in upstream."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from proxy.routes import Routes
from tests.conftest import REPO, free_port, stop_process, wait_http_ok
from tests.test_proxy_faults import wait_until
from tests.upstream_standin import ProxyProcess, StandIn, routes_for

HOST_APP = """
import os

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from proxy.asgi import create_asgi_app


async def hello(request):
    return PlainTextResponse("the host app")


app = Starlette(
    routes=[Route("/", hello), Mount("/llm", app=create_asgi_app(os.environ["ROUTES"]))]
)
"""


class Uvicorn:
    """``python -m uvicorn ...`` on a free loopback port; ``stop`` ends it by pid."""

    def __init__(self, directory: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "uvicorn.log"
        environ = {k: v for k, v in os.environ.items() if k != "TOOLKIT_API_KEYS"}
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), environ.get("PYTHONPATH")])
        )
        environ.update(env or {})
        argv = [sys.executable, "-m", "uvicorn", *args, "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=directory,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait(self, path: str) -> None:
        try:
            wait_http_ok(self.url + path, deadline_s=30, proc=self.process)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def write_routes(directory: Path, **urls: str) -> Path:
    """Routes with a model per keyword (its name) served by the URL given, checked often."""
    models = {name: routes_for(name, url)["models"][name] for name, url in urls.items()}
    path = directory / "routes.yml"
    path.write_text(yaml.safe_dump({"models": models, "health_interval": 0.2}))
    return path


def chat(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "stand-in answer"
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert [c.choices[0].delta.content for c in stream if c.choices] == [
        f"tok{i} " for i in range(5)
    ]


@pytest.mark.parametrize(
    "target",
    [("proxy.asgi:app",), ("--factory", "proxy.asgi:create_asgi_app")],
    ids=["app", "factory"],
)
def test_uvicorn_runs_the_proxy_named_by_toolkit_routes(standin, tmp_path, target):
    routes = write_routes(tmp_path, m=standin.url)
    server = Uvicorn(tmp_path, *target, env={"TOOLKIT_ROUTES": str(routes)})
    try:
        server.wait("/health")
        # lifespan started the health checks: the stand-in is checked again and again
        assert wait_until(lambda: len(standin.checked) >= 3), server.log()
        chat(openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0))
        # the proxy's own access log (written in batches)
        assert wait_until(lambda: '"status":200' in server.log()), server.log()
    finally:
        server.stop()


def test_without_toolkit_routes_uvicorn_says_what_is_missing(tmp_path):
    server = Uvicorn(tmp_path, "proxy.asgi:app")
    try:
        assert server.process.wait(timeout=60) != 0
        assert "TOOLKIT_ROUTES is not set" in server.log()
    finally:
        server.stop()


def test_mounted_in_another_app_under_a_prefix(tmp_path):
    (tmp_path / "host.py").write_text(HOST_APP)
    with StandIn(chunks=5) as standin, StandIn(chunks=500, delay=0.02) as slow:
        routes = write_routes(tmp_path, m=standin.url, slow=slow.url)
        server = Uvicorn(tmp_path, "host:app", env={"ROUTES": str(routes)})
        try:
            server.wait("/")
            assert httpx.get(server.url + "/").text == "the host app"
            client = openai.OpenAI(base_url=server.url + "/llm/v1", api_key="x", max_retries=0)
            chat(client)
            assert sorted(m.id for m in client.models.list()) == ["m", "slow"]
            # no lifespan reaches a mounted app: its health checks started with the first request
            checked = len(standin.checked)
            assert wait_until(lambda: len(standin.checked) >= checked + 2), server.log()
            health = httpx.get(server.url + "/llm/health").json()
            assert health["status"] == "ok"
            assert httpx.get(server.url + "/llm/v1/nope").status_code == 404
            # a client that goes away mid-stream closes the backend's request
            body = {"model": "slow", "messages": [], "stream": True}
            url = server.url + "/llm/v1/chat/completions"
            with httpx.stream("POST", url, json=body, timeout=30) as response:
                chunks = response.iter_bytes()
                next(chunks)
                next(chunks)
            assert slow.client_closed.wait(2.0), "the upstream request was still open after 2 s"
        finally:
            server.stop()


SEND_TIMEOUT_APP = """
import dataclasses
import os

import proxy.asgi
from proxy.routes import Routes

if "send_timeout" not in {field.name for field in dataclasses.fields(Routes)}:
    proxy.asgi.SEND_TIMEOUT = 1.0  # a routes file without send_timeout: the default, shorter
app = proxy.asgi.create_asgi_app(os.environ["ROUTES"])
"""


def test_a_stream_the_client_does_not_read_is_cut_off_and_frees_its_backend(tmp_path):
    (tmp_path / "cutoff.py").write_text(SEND_TIMEOUT_APP)
    with StandIn() as standin:
        routes = write_routes(tmp_path, m=standin.url)
        if "send_timeout" in {field.name for field in dataclasses.fields(Routes)}:
            routes.write_text(routes.read_text() + "send_timeout: 1\n")
        server = Uvicorn(tmp_path, "cutoff:app", env={"ROUTES": str(routes)})
        try:
            server.wait("/health")
            # 640 chunks of 64 KiB (42 MB) to a client that reads none of it
            body = json.dumps(
                {"model": "m", "stream": True, "standin_chunks": 640, "standin_padding": 65536}
            ).encode()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            assert standin.client_closed.wait(20), "the backend's request was still open"
            assert standin.chunks_sent < 640
            assert wait_until(lambda: "the client read nothing for 1 s" in server.log())
            sock.close()
        finally:
            server.stop()


@pytest.mark.parametrize(
    "unfinished",
    [b"X-A: " + b"a" * 70000, b"X-" + b"a" * 70000, b"X-A: b\r\n" * 10000],
    ids=["value", "name-without-colon", "many-headers"],
)
def test_uvicorn_refuses_a_request_head_over_the_limit(standin, tmp_path, unfinished):
    """uvicorn alone would buffer a head that never ends for as long as it comes."""
    proxy = ProxyProcess(routes_for("m", standin.url), tmp_path, server="uvicorn")
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + unfinished)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), received[:200]
        assert json.loads(body)["error"]["message"] == "the request headers are too large"
        sock.close()
        # a large body is no head: a request with one in a single write is answered
        padded = json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "x" * 300_000}]}
        ).encode()
        response = httpx.post(proxy.url + "/v1/chat/completions", content=padded, timeout=30)
        assert response.status_code == 200
    finally:
        proxy.stop()


def test_uvicorn_checks_the_key_before_reading_the_body(standin, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("the-key\n")
    routes = {**routes_for("m", standin.url), "keys_file": str(keys)}
    proxy = ProxyProcess(routes, tmp_path, server="uvicorn")
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        # 15 MB announced, none sent, and a client that waits for 100 Continue: 401 at once
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 15000000\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = bytearray()
        while b"invalid_api_key" not in answer and (data := sock.recv(65536)):
            answer += data  # the head and the body may come in two pieces
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b"invalid_api_key" in answer
        sock.close()
        keyed = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers={"Authorization": "Bearer the-key"},
        )
        assert keyed.status_code == 200
    finally:
        proxy.stop()
