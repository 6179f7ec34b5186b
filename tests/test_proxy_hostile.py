"""What a hostile client can make the proxy spend, each case of issue 13 as exact bytes sent over
a socket to a real proxy process on 127.0.0.1 (the upstream is a stand-in HTTP server).

Memory is read from the proxy's /proc/PID/status; bounds are generous (tens of MB where the
unbounded behaviour grew by hundreds), and no test asserts how long anything took."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import subprocess
import sys
import threading
import time
import weakref

import pytest

from tests.conftest import REPO
from tests.test_proxy_http import BODY, closed_by_peer, connect, post, read_response
from tests.upstream_standin import ProxyProcess, StandIn, routes_for

KIB = 1024


@pytest.fixture
def start_proxy(tmp_path):
    started: list[ProxyProcess] = []

    def start(routes, **kwargs) -> ProxyProcess:
        proxy = ProxyProcess(routes, tmp_path, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(standin, start_proxy):
    return start_proxy(routes_for("m", standin.url))


def rss(proxy: ProxyProcess) -> int:
    """The proxy process's resident memory, in bytes."""
    with open(f"/proc/{proxy.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    raise AssertionError("no VmRSS")


def send_until_refused(sock: socket.socket, head: bytes, piece: bytes, most: int) -> int:
    """Send ``head``, then ``piece`` again and again, ``most`` bytes at most or until the
    proxy stops taking them; how many bytes were sent."""
    sent = 0
    try:
        sock.sendall(head)
        while sent < most:
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    return sent


def refusal(sock: socket.socket) -> tuple[int, dict]:
    """The one answer on a connection the proxy refused, and that it closed after it."""
    status, _, body = read_response(sock, bytearray())
    assert closed_by_peer(sock)
    return status, json.loads(body)


def wait_until(condition, seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# case 1 and case 9's empty headers: the head is counted whatever its shape


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-A: ",  # a value that never ends
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-A",  # a name without a colon
    ],
    ids=["unterminated-value", "name-without-colon"],
)
def test_a_header_that_never_ends_is_431(proxy, head):
    sock = connect(proxy)
    before = rss(proxy)
    sent = send_until_refused(sock, head, b"a" * 64 * KIB, most=8 * 1024 * KIB)
    status, body = refusal(sock)
    assert status == 431 and "too large" in body["error"]["message"]
    assert sent < 8 * 1024 * KIB or rss(proxy) - before < 32 * 1024 * KIB
    # a well-behaved client on another connection is answered as usual
    other = connect(proxy)
    other.sendall(post())
    assert read_response(other, bytearray())[0] == 200


def test_sixty_thousand_empty_headers_are_431(proxy):
    sock = connect(proxy)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X:\r\n" * 60_000 + b"\r\n")
    status, _ = refusal(sock)
    assert status == 431


def test_a_target_over_8_kib_is_414(proxy):
    sock = connect(proxy)
    sock.sendall(b"GET /" + b"p" * 60_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _ = refusal(sock)
    assert status == 414


def test_a_head_just_under_the_limit_in_small_pieces_is_read(proxy):
    # 60 KB of headers sent 1 KB at a time: every byte is counted once, not once per piece
    head = post(extra=b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(58)))
    sock = connect(proxy)
    for at in range(0, len(head), KIB):
        sock.sendall(head[at : at + KIB])
        time.sleep(0.001)
    assert read_response(sock, bytearray())[0] == 200


# case 2: back-pressure on whole responses, and the send timeout


def test_pipelined_requests_never_read_are_bounded_then_cut(standin, start_proxy):
    proxy = start_proxy({**routes_for("m", standin.url), "send_timeout": 1})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB)  # reads nothing anyway
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KIB)
    sock.connect(("127.0.0.1", proxy.port))
    sock.settimeout(5)  # no progress for that long: the proxy has stopped reading
    before = rss(proxy)
    # up to 1,000,000 requests of 39 bytes whose answers are ~250 bytes each (250 MB); the
    # kernel's buffers hold a few MB of them, the proxy must stop reading the rest
    batch = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    sent = 0
    end = time.monotonic() + 60
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
        while sent < 1_000_000 and time.monotonic() < end:
            sock.sendall(batch)
            sent += 1000
    grown = rss(proxy) - before
    assert sent < 1_000_000 and time.monotonic() < end, "the proxy read on, nobody reading"
    assert grown < 48 * 1024 * KIB, f"the proxy grew {grown >> 20} MB"
    # the client reads nothing for the 1 s send_timeout: the proxy drops the connection
    assert wait_until(lambda: connection_dropped(sock)), "still open after the send timeout"
    sock.close()


def connection_dropped(sock: socket.socket) -> bool:
    """Whether the proxy reset this connection (a send fails; a recv drains, then fails)."""
    try:
        sock.send(b"x")
        return False
    except (BrokenPipeError, ConnectionResetError):
        return True
    except TimeoutError:
        return False


# case 3: a streaming client that stops reading releases its backend after send_timeout


def test_a_stream_whose_client_stops_reading_releases_the_backend(start_proxy):
    with StandIn() as standin:
        proxy = start_proxy({**routes_for("m", standin.url), "send_timeout": 1})
        body = json.dumps(
            {"model": "m", "stream": True, "standin_chunks": 4000, "standin_padding": 65536}
        ).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(post(body))
        assert standin.stream_started.wait(10)
        # never read: the proxy gives up on the client, and closes the backend's request
        assert standin.client_closed.wait(30), "the backend is still held by a stalled client"
        assert standin.chunks_sent < 4000
        sock.close()


# case 4: client-chosen names are neither kept nor echoed whole


def test_made_up_model_names_are_cut_in_answers_and_logs(proxy):
    sock = connect(proxy)
    buffer = bytearray()
    before = rss(proxy)
    for index in range(40):
        name = f"{index}-" + "n" * (1024 * KIB)
        sock.sendall(post(json.dumps({"model": name, "messages": []}).encode()))
        status, _, body = read_response(sock, buffer)
        assert status == 404 and len(body) < 2 * KIB
        assert "characters)" in json.loads(body)["error"]["message"]
    assert rss(proxy) - before < 48 * 1024 * KIB  # 40 MB of names sent; none kept
    sock.sendall(b"GET /" + b"q" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = read_response(sock, buffer)
    assert status == 404 and len(body) < 2 * KIB
    time.sleep(0.3)  # the access log is written in batches, every 0.1 s
    assert max(len(line) for line in proxy.log().splitlines()) < 2 * KIB


# case 5: the key is checked when the head is read; a cap on connections


@pytest.fixture
def keyed_proxy(standin, start_proxy, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("the-key\n")
    return start_proxy({**routes_for("m", standin.url), "keys_file": str(keys)})


def test_no_key_is_401_before_the_body_is_read(keyed_proxy, standin):
    sock = connect(keyed_proxy)
    # 15 MB announced, none sent: the answer comes at once
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 15000000\r\n"
        b"Content-Type: application/json\r\n\r\n"
    )
    status, body = refusal(sock)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert standin.requests == 0


def test_expect_100_continue_without_key_is_refused(keyed_proxy):
    sock = connect(keyed_proxy)
    head = post(extra=b"Expect: 100-continue\r\n").partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    sock.sendall(head)
    status, _ = refusal(sock)
    assert status == 401  # not 100


def test_a_key_in_a_chunked_trailer_is_not_taken(keyed_proxy, standin):
    # trailers are counted against the head limit and dropped, never merged into the headers
    sock = connect(keyed_proxy)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\nAuthorization: Bearer the-key\r\n\r\n" % (len(BODY), BODY)
    )
    status, _ = refusal(sock)
    assert status == 401 and standin.requests == 0


def test_connections_past_the_cap_get_503(standin, start_proxy):
    proxy = start_proxy({**routes_for("m", standin.url), "max_connections": 3})
    held = [connect(proxy) for _ in range(3)]
    for sock in held:
        sock.sendall(post())
        assert read_response(sock, bytearray())[0] == 200
    extra = connect(proxy)
    extra.sendall(post())
    status, body = refusal(extra)
    assert status == 503 and body["error"]["code"] == "too_many_connections"
    held.pop().close()

    def admitted() -> bool:
        sock = connect(proxy)
        sock.sendall(post())
        try:
            return read_response(sock, bytearray())[0] == 200
        finally:
            sock.close()

    assert wait_until(admitted)


# case 6: a closed connection is freed at once, not by the cycle collector


def test_a_closed_connection_is_freed_without_the_cycle_collector():
    from proxy.connection import Connection, Listener

    def handler(request, connection):
        connection.respond(200, (), b"ok")

    async def scenario() -> weakref.ref:
        listener = Listener(handler, lambda: 1 << 20)
        made: list[Connection] = []

        def factory() -> Connection:
            made.append(Connection(listener))
            return made[-1]

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nX-A: aaa")
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        connection = weakref.ref(made.pop())
        writer.close()
        for _ in range(100):  # until the proxy side has seen the close
            if connection() is None or connection().disconnected:
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return connection

    gc.disable()
    try:
        loop = asyncio.new_event_loop()
        connection = loop.run_until_complete(scenario())
        loop.close()
        assert connection() is None, gc.get_referrers(connection())
    finally:
        gc.enable()


# case 7: answer what came before, then refuse


def test_connection_close_then_a_second_request_in_one_packet(proxy):
    sock = connect(proxy)
    sock.sendall(post(extra=b"Connection: close\r\n") + post())
    status, headers, _ = read_response(sock, bytearray())
    assert status == 200 and headers[b"connection"] == b"close"
    assert closed_by_peer(sock)


def test_upgrade_h2c_is_answered_in_http_11(proxy):
    sock = connect(proxy)
    sock.sendall(
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    status, headers, body = read_response(sock, bytearray())
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert closed_by_peer(sock)


def test_a_bad_request_after_good_pipelined_ones(proxy, standin):
    sock = connect(proxy)
    buffer = bytearray()
    sock.sendall(post() + post() + b"NOT HTTP AT ALL\r\n\r\n")
    assert [read_response(sock, buffer)[0] for _ in range(3)] == [200, 200, 400]
    assert closed_by_peer(sock)
    assert standin.requests == 2


# case 8: 400, not 500


def test_an_absolute_target_parse_url_rejects_is_400(proxy):
    sock = connect(proxy)
    sock.sendall(b"GET http://a:b:c/ HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _ = refusal(sock)
    assert status == 400
    assert "Traceback" not in proxy.log()


def test_deeply_nested_json_is_400(proxy, standin):
    sock = connect(proxy)
    nested = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    sock.sendall(post(nested))
    status, _, body = read_response(sock, bytearray())
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    assert "Traceback" not in proxy.log() and standin.requests == 0


# case 9: looseness


@pytest.mark.parametrize("hosts", [b"", b"Host: a\r\nHost: b\r\n"], ids=["no-host", "two-hosts"])
def test_http_11_needs_exactly_one_host(proxy, hosts):
    sock = connect(proxy)
    sock.sendall(b"GET /health HTTP/1.1\r\n" + hosts + b"\r\n")
    status, body = refusal(sock)
    assert status == 400 and "Host" in body["error"]["message"]


def test_http_10_may_omit_host(proxy):
    sock = connect(proxy)
    sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
    assert read_response(sock, bytearray())[0] == 200


def test_http_10_with_transfer_encoding_is_answered_then_closed(proxy):
    sock = connect(proxy)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    )
    status, headers, _ = read_response(sock, bytearray())
    assert status == 200 and headers[b"connection"] == b"close"
    assert closed_by_peer(sock)


def test_transfer_encoding_other_than_chunked_is_501(proxy, standin):
    sock = connect(proxy)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    )
    status, _ = refusal(sock)
    assert status == 501 and standin.requests == 0


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"1e400"])
def test_numbers_json_cannot_carry_are_400_when_the_body_is_rewritten(start_proxy, number):
    with StandIn() as standin:
        routes = {
            "models": {
                "m": {
                    "aliases": ["alias"],
                    "backends": [{"url": standin.url, "runtime": "llamacpp"}],
                }
            }
        }
        proxy = start_proxy(routes)
        sock = connect(proxy)
        body = b'{"model": "alias", "messages": [], "temperature": %s}' % number
        sock.sendall(post(body))
        status, _, answer = read_response(sock, bytearray())
        assert status == 400 and json.loads(answer)["error"]["code"] == "invalid_json"
        assert standin.requests == 0


def test_an_empty_keys_file_is_an_error(standin, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# no key yet\n")
    routes = tmp_path / "routes.yml"
    routes.write_text(json.dumps({**routes_for("m", standin.url), "keys_file": str(keys)}))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--routes", str(routes), "--port", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "holds no key" in result.stderr and str(keys) in result.stderr


def test_hostile_neighbours_do_not_stop_a_well_behaved_client(proxy):
    """Cases 1 and 2 running on two connections while a third is answered as usual."""
    stop = threading.Event()

    def endless_header() -> None:
        while not stop.is_set():
            sock = connect(proxy)
            send_until_refused(sock, b"POST / HTTP/1.1\r\nHost: x\r\nX-A: ", b"a" * 65536, 1 << 22)
            sock.close()

    def pipeline_never_read() -> None:
        sock = connect(proxy)
        sock.settimeout(0.5)
        request = b"GET /" + b"p" * 60_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        with contextlib.suppress(OSError):
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    sock.sendall(request)
        sock.close()

    threads = [
        threading.Thread(target=endless_header),
        threading.Thread(target=pipeline_never_read),
    ]
    for thread in threads:
        thread.start()
    try:
        sock = connect(proxy)
        buffer = bytearray()
        for _ in range(50):
            sock.sendall(post())
            assert read_response(sock, buffer)[0] == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
