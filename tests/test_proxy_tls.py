"""The proxy speaking HTTPS, with either server, to clients that verify its certificate: one
this test makes (self-signed, for 127.0.0.1 and localhost), given in the routes file or on the
command line."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.routes import RoutesError, parse_routes
from tests.conftest import REPO
from tests.upstream_standin import ProxyProcess, routes_for


def make_certificate(directory: Path, name: str = "proxy") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, Path]:
    return make_certificate(tmp_path)


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts ``cert`` alone, and checks the host name against it."""
    return ssl.create_default_context(cafile=str(cert))


def chat_and_stream(proxy: ProxyProcess, cert: Path) -> None:
    http_client = httpx.Client(verify=trusting(cert), timeout=30)
    client = openai.OpenAI(
        base_url=proxy.url + "/v1", api_key="x", max_retries=0, http_client=http_client
    )
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "stand-in answer"
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices]
    assert pieces == [f"tok{i} " for i in range(5)]
    assert [m.id for m in client.models.list()] == ["m"]


def test_https_from_the_routes_file(standin, tmp_path, certificate, proxy_server):
    cert, key = certificate
    routes = {**routes_for("m", standin.url), "tls": {"cert": cert.name, "key": key.name}}
    proxy = ProxyProcess(routes, tmp_path, server=proxy_server, ca=cert)  # relative to routes
    try:
        assert proxy.url.startswith("https://")
        chat_and_stream(proxy, cert)
        # a client that does not trust this certificate refuses the connection
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(proxy.url + "/health", timeout=10)
        # and plain HTTP to the port gets no answer from the proxy
        plain = proxy.url.replace("https://", "http://") + "/health"
        with pytest.raises(httpx.TransportError):
            httpx.get(plain, timeout=10)
        assert httpx.get(proxy.url + "/health", verify=trusting(cert)).status_code == 200
    finally:
        proxy.stop()


def test_https_from_the_command_line_to_curl(standin, tmp_path, proxy_server):
    cert, key = make_certificate(tmp_path, "given")
    args = ("--tls-cert", str(cert), "--tls-key", str(key))
    proxy = ProxyProcess(
        routes_for("m", standin.url), tmp_path, server=proxy_server, ca=cert, args=args
    )
    try:
        body = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
        done = subprocess.run(
            ["curl", "-sS", "--fail", "--cacert", str(cert), "-N", "-d", body]
            + ["-H", "content-type: application/json", proxy.url + "/v1/chat/completions"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("data: ") == 6 and done.stdout.rstrip().endswith("[DONE]")
    finally:
        proxy.stop()


def run_proxy(routes: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "proxy", "--routes", str(routes), "--port", "0", *args]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("server", ["builtin", "uvicorn"])
def test_an_unusable_certificate_is_an_error_before_listening(standin, tmp_path, server):
    cert, _ = make_certificate(tmp_path, "one")
    _, other_key = make_certificate(tmp_path, "other")
    routes = tmp_path / "routes.yml"
    routes.write_text(f"models:\n  m:\n    backends: [{{url: '{standin.url}'}}]\n")
    mismatched = run_proxy(
        routes, "--server", server, "--tls-cert", str(cert), "--tls-key", str(other_key)
    )
    assert mismatched.returncode == 2
    assert "proxy: error:" in mismatched.stderr and str(cert) in mismatched.stderr
    missing = run_proxy(
        routes, "--server", server, "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", "k"
    )
    assert missing.returncode == 2 and "nope.crt: cannot read" in missing.stderr
    half = run_proxy(routes, "--server", server, "--tls-cert", str(cert))
    assert half.returncode == 2 and "go together" in half.stderr


def test_the_routes_files_tls_key(tmp_path):
    text = "models:\n  m:\n    backends: [{url: 'http://127.0.0.1:1'}]\n"
    routes = parse_routes(text + "tls: {cert: a.crt, key: /etc/b.key}\n", tmp_path / "r.yml")
    assert routes.tls is not None
    assert (routes.tls.cert, routes.tls.key) == (tmp_path / "a.crt", Path("/etc/b.key"))
    with pytest.raises(RoutesError, match=r"r\.yml:5: tls needs 'key'"):
        parse_routes(text + "tls:\n  cert: a.crt\n", tmp_path / "r.yml")
    with pytest.raises(RoutesError, match=r"r\.yml:4: unknown key 'certificate' in tls"):
        parse_routes(text + "tls: {certificate: a.crt}\n", tmp_path / "r.yml")
