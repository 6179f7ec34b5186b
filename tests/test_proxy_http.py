"""The proxy's own HTTP/1.1 server side, spoken to over raw sockets: keep-alive, pipelining,
HTTP/1.0, Expect: 100-continue, chunked uploads, malformed requests, absolute-form targets, write
back-pressure on a stream and a graceful stop.
The upstream is a stand-in (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx
import pytest

from tests.upstream_standin import ProxyProcess, StandIn, routes_for

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
def proxy(standin, tmp_path, proxy_server):
    process = ProxyProcess(routes_for("m", standin.url), tmp_path, server=proxy_server)
    yield process
    process.stop()


def post(
    body: bytes = BODY,
    version: bytes = b"1.1",
    extra: bytes = b"",
    target: bytes = b"/v1/chat/completions",
) -> bytes:
    return (
        b"POST " + target + b" HTTP/" + version + b"\r\nHost: proxy\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n"
    ) + body


def connect(proxy: ProxyProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.settimeout(10)
    return sock


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response with a Content-Length body; what follows stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"connection closed before a whole response head: {bytes(buffer)!r}"
        buffer += data
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[: len(head) + 4]
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    while len(buffer) < length:
        data = sock.recv(65536)
        assert data, "connection closed in the middle of a body"
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return int(status_line.split()[1]), headers, body


def test_idle_connections_are_closed_after_the_keepalive_timeout(standin, tmp_path, proxy_server):
    routes = {**routes_for("m", standin.url), "keepalive_timeout": 0.5}
    process = ProxyProcess(routes, tmp_path, server=proxy_server)
    try:
        idle, busy = connect(process), connect(process)
        idle_buffer, busy_buffer = bytearray(), bytearray()
        idle.sendall(post())
        assert read_response(idle, idle_buffer)[0] == 200
        for _ in range(8):  # 1.6 s of a request every 0.2 s: never idle for 0.5 s
            busy.sendall(post())
            assert read_response(busy, busy_buffer)[0] == 200
            time.sleep(0.2)
        assert closed_by_peer(idle)  # idle since its answer: closed by now
        busy.sendall(post())
        assert read_response(busy, busy_buffer)[0] == 200
    finally:
        process.stop()


def test_absolute_form_targets_are_routed_by_their_path(proxy, standin):
    sock = connect(proxy)
    buffer = bytearray()
    sock.sendall(post(target=b"http://proxy/v1/chat/completions"))
    status, _, body = read_response(sock, buffer)
    assert status == 200 and json.loads(body)["object"] == "chat.completion"
    sock.sendall(b"GET http://proxy/v1/models?x=1 HTTP/1.1\r\nHost: proxy\r\n\r\n")
    status, _, body = read_response(sock, buffer)
    assert status == 200 and json.loads(body)["data"][0]["id"] == "m"
    assert standin.requests == 1


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_and_pipelined_requests_answered_in_order(proxy, standin):
    sock = connect(proxy)
    buffer = bytearray()
    sock.sendall(post())
    assert read_response(sock, buffer)[0] == 200
    # three requests in one write; the middle one names an unknown model
    unknown = BODY.replace(b'"m"', b'"nope"')
    sock.sendall(post() + post(unknown) + post())
    answers = [read_response(sock, buffer) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 404, 200]
    assert json.loads(answers[1][2])["error"]["code"] == "model_not_found"
    assert standin.requests == 3
    sock.sendall(post())  # still open
    assert read_response(sock, buffer)[0] == 200
    sock.close()


def test_http_10_gets_its_answer_then_the_connection_closes(proxy):
    sock = connect(proxy)
    buffer = bytearray()
    sock.sendall(post(version=b"1.0"))
    status, headers, body = read_response(sock, buffer)
    assert status == 200 and headers[b"connection"] == b"close"
    assert json.loads(body)["choices"][0]["message"]["content"] == "stand-in answer"
    assert closed_by_peer(sock)
    sock.close()


@pytest.mark.builtin_only("uvicorn closes every HTTP/1.0 connection after its answer")
def test_http_10_keep_alive_when_asked(proxy):
    sock = connect(proxy)
    buffer = bytearray()
    for _ in range(2):
        sock.sendall(post(version=b"1.0", extra=b"Connection: keep-alive\r\n"))
        status, headers, _ = read_response(sock, buffer)
        assert status == 200 and headers[b"connection"] == b"keep-alive"
    sock.close()


def test_expect_100_continue(proxy, tmp_path):
    sock = connect(proxy)
    buffer = bytearray()
    head, _, body = post(extra=b"Expect: 100-continue\r\n").partition(b"\r\n\r\n")
    sock.sendall(head + b"\r\n\r\n")
    assert read_response(sock, buffer)[0] == 100  # before any byte of the body
    sock.sendall(body)
    assert read_response(sock, buffer)[0] == 200
    sock.close()


def test_too_large_with_expect_is_refused_before_the_body(standin, tmp_path, proxy_server):
    routes = {**routes_for("m", standin.url), "max_body_bytes": 100}
    proxy = ProxyProcess(routes, tmp_path, server=proxy_server)
    try:
        sock = connect(proxy)
        head = post(b"x" * 5000, extra=b"Expect: 100-continue\r\n").partition(b"\r\n\r\n")[0]
        sock.sendall(head + b"\r\n\r\n")
        status, _, body = read_response(sock, bytearray())
        assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
        assert closed_by_peer(sock)
        sock.close()
        assert standin.requests == 0
    finally:
        proxy.stop()


def test_chunked_request_body(proxy, standin):
    sock = connect(proxy)
    half = len(BODY) // 2
    chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        half,
        BODY[:half],
        len(BODY) - half,
        BODY[half:],
    )
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks
    )
    assert read_response(sock, bytearray())[0] == 200
    assert standin.bodies[-1]["messages"][0]["content"] == "hi"
    sock.close()


def test_malformed_request_is_400_and_closed(proxy):
    sock = connect(proxy)
    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    status, _, body = read_response(sock, bytearray())
    assert status == 400 and "invalid HTTP request" in json.loads(body)["error"]["message"]
    assert closed_by_peer(sock)
    sock.close()
    assert httpx.get(proxy.url + "/health").status_code == 200  # the proxy itself is fine


def test_sigterm_lets_a_stream_in_flight_finish(tmp_path, proxy_server):
    with StandIn(chunks=20, delay=0.05) as slow:
        proxy = ProxyProcess(routes_for("m", slow.url), tmp_path, server=proxy_server)
        try:
            body = {"model": "m", "messages": [], "stream": True}
            received: list[bytes] = []
            with httpx.stream(
                "POST", proxy.url + "/v1/chat/completions", json=body, timeout=30
            ) as response:
                chunks = response.iter_bytes()
                received.append(next(chunks))
                proxy.process.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                with pytest.raises(httpx.ConnectError):  # no longer accepting
                    httpx.get(proxy.url + "/health", timeout=2)
                received.extend(chunks)
            text = b"".join(received).decode()
            assert text.count("data: ") == 21 and text.rstrip().endswith("data: [DONE]")
            assert proxy.process.wait(timeout=10) == 0
        finally:
            proxy.stop()


def test_idle_keep_alive_connections_do_not_delay_a_stop(proxy):
    idle = [connect(proxy) for _ in range(3)]
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(timeout=10) == 0  # far less than the 30 s granted to requests
    for sock in idle:
        assert closed_by_peer(sock)
        sock.close()


@pytest.mark.builtin_only("uvicorn sends an HTTP/1.0 client a chunked stream")
def test_http_10_stream_ends_with_the_connection(proxy):
    sock = connect(proxy)
    body = json.dumps({"model": "m", "messages": [], "stream": True}).encode()
    sock.sendall(post(body, version=b"1.0", extra=b"Connection: keep-alive\r\n"))
    received = bytearray()
    while data := sock.recv(65536):  # no chunked encoding for HTTP/1.0: read until closed
        received += data
    head, _, text = bytes(received).partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"connection: close" in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert text.count(b"data: ") == 6 and text.rstrip().endswith(b"data: [DONE]")
    sock.close()


def dechunk(data: bytes) -> bytes:
    """The body of a response sent with ``Transfer-Encoding: chunked``."""
    body, at = bytearray(), 0
    while True:
        line_end = data.index(b"\r\n", at)
        size = int(data[at:line_end], 16)
        if size == 0:
            return bytes(body)
        body += data[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2


def test_a_client_that_does_not_read_slows_the_backend_down(proxy, standin):
    # 640 chunks of 64 KiB (42 MB); the client reads none of it for a second. The kernel's and
    # the proxy's buffers hold a few MB, so the stand-in's writes must wait for the client
    # instead of the proxy taking the whole stream into its memory.
    body = json.dumps(
        {"model": "m", "stream": True, "standin_chunks": 640, "standin_padding": 65536}
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # no room on the client's side
    sock.settimeout(10)
    sock.connect(("127.0.0.1", proxy.port))
    sock.sendall(post(body))
    time.sleep(1.0)
    held_back = standin.chunks_sent
    assert held_back < 320, f"the backend wrote {held_back} of 640 chunks to a client not reading"
    received = bytearray()
    while not received.endswith(b"\r\n0\r\n\r\n"):
        data = sock.recv(1 << 20)
        assert data, "the stream ended early"
        received += data
    sock.close()
    head, _, chunked = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    events = [e for e in dechunk(chunked).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    texts = [json.loads(e[len(b"data: ") :])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert [text.split(" ")[0] for text in texts] == [f"tok{i}" for i in range(640)]
