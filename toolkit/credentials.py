"""The proxy's secrets that toolkit delivers: API keys and its TLS certificate.

API keys come from a keys file on the workstation (``proxy: {keys: ./api-keys}``) or are made
once per host (``keys: generate``): 32 random bytes, kept 0600 under the state dir
(``keys/<host>``), written to the host 0600, and shown once, in the recap of the run that made
them — never in a log, a diff or ``--json``.

TLS: a given certificate and key (``tls: {cert: ..., key: ...}``, files on the workstation), or a
self-signed one made once per host (``tls: self-signed``: an ECDSA P-256 key, valid for the
host's name, its address, localhost and 127.0.0.1, ten years), kept under ``tls/<host>/``; its
``cert.pem`` is the CA file clients trust, and the recap prints its SHA-256 fingerprint.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from toolkit.workstation import state_dir

_made_lock = threading.Lock()
MADE_THIS_RUN: dict[str, str] = {}  # host -> generated key, for the recap only


def _safe(host: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in host)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def generated_key_path(host: str) -> Path:
    return state_dir() / "keys" / _safe(host)


def generated_key(host: str) -> bytes:
    """The host's generated API key (a keys-file line), made on first use."""
    path = generated_key_path(host)
    with _made_lock:
        if not path.is_file():
            key = "tk-" + secrets.token_urlsafe(32)
            _write_private(path, f"{key}\n".encode())
            MADE_THIS_RUN[host] = key
        return path.read_bytes()


def keys_file_content(keys: str, host: str) -> bytes:
    """What the host's keys file holds: ``generate`` or a keys file on the workstation."""
    if keys == "generate":
        return generated_key(host)
    return Path(keys).expanduser().read_bytes()


@dataclass
class TlsPair:
    cert: bytes
    key: bytes
    ca_file: Path | None = None  # where a self-signed certificate is kept for clients
    fingerprint: str = ""


def tls_pair(tls: str | dict, host: str, address: str) -> TlsPair:
    if isinstance(tls, dict):
        cert = Path(tls["cert"]).expanduser().read_bytes()
        return TlsPair(cert, Path(tls["key"]).expanduser().read_bytes(), None, fingerprint(cert))
    folder = state_dir() / "tls" / _safe(host)
    with _made_lock:
        if not (folder / "cert.pem").is_file():
            cert, key = self_signed(host, address)
            _write_private(folder / "key.pem", key)
            _write_private(folder / "cert.pem", cert)
    cert = (folder / "cert.pem").read_bytes()
    return TlsPair(cert, (folder / "key.pem").read_bytes(), folder / "cert.pem", fingerprint(cert))


def fingerprint(cert_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def self_signed(host: str, address: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(host)]
    ips = {"127.0.0.1"}
    try:
        ips.add(str(ipaddress.ip_address(address)))
    except ValueError:
        names.append(x509.DNSName(address))
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in sorted(ips)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"toolkit proxy {host}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
