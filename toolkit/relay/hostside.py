"""One hop of a blob relay. Runs ON the hosts (python3, standard library only).

toolkit runs this file with ``python3 -c SOURCE MODE ...`` (nothing is installed for it): the
source goes on the command line, the secret token on stdin, so it never shows in ``ps``.

``serve BIND_ADDRESS PARTIAL FINAL SIZE``
    Listens on BIND_ADDRESS at a free port, prints ``port=<port> pid=<pid>`` and then a dot
    every few seconds (a closed SSH channel makes that write fail, and the server ends). Each
    connection must send the token and a newline within a few seconds; then it gets the blob's
    SIZE bytes from the host's copy while that copy is still arriving: PARTIAL while it grows,
    FINAL once it is renamed. When the copy being read is abandoned (its receiver failed and
    starts over into a new PARTIAL), the stream goes on from the same offset in the new one:
    every copy of a blob holds the same bytes at the same offsets, and the receiver's sha256
    catches anything else. A copy that does not grow for STALL_S seconds ends the stream early.

``receive ADDRESS PORT PARTIAL FINAL SIZE SHA256``
    Connects (within CONNECT_S seconds, else exit 3), sends the token, writes the stream into a
    fresh PARTIAL while hashing it, fsyncs, and renames PARTIAL to FINAL only when SIZE bytes
    came and their sha256 is SHA256. Prints ``got=<bytes>`` lines while it runs. On any failure
    PARTIAL is removed: exit 4 (the stream ended early or stalled), 5 (sha256 differs).
"""

import contextlib
import hashlib
import hmac
import os
import socket
import sys
import threading
import time

CONNECT_S = float(os.environ.get("TK_RELAY_CONNECT_S", "5"))
STALL_S = float(os.environ.get("TK_RELAY_STALL_S", "60"))
HEARTBEAT_S = 2.0
BLOCK = 1 << 20
POLL_S = 0.02


class Kept:
    """The complete copy, held open once seen: it can still be served after the host removes it
    (an engine archive is deleted once unpacked)."""

    fd = None

    @classmethod
    def keep(cls, final, size):
        while cls.fd is None:
            try:
                if os.stat(final).st_size == size:
                    cls.fd = os.open(final, os.O_RDONLY)
                    return
            except OSError:
                pass
            time.sleep(0.2)


def current_copy(partial, final, size):
    """(path, inode) of the copy to read now: the growing PARTIAL, else a complete FINAL."""
    for path in (Kept.fd, partial, final):
        if path is None:
            continue
        try:
            info = os.stat(path)
        except OSError:
            continue
        if path == partial or info.st_size == size:  # a complete copy, or one still growing
            return path, info.st_ino
    return None, None


def stream_copy(conn, partial, final, size):
    """Send SIZE bytes of the blob from the host's copy, following it as it grows."""
    sent, source, inode = 0, None, None
    last_growth = time.monotonic()
    try:
        while sent < size:
            if source is None:
                path, inode = current_copy(partial, final, size)
                if path is not None:
                    try:
                        held = os.dup(path) if isinstance(path, int) else path
                        source = open(held, "rb")  # noqa: SIM115 - kept open across the loop
                    except OSError:
                        source = None
            if source is not None:
                available = os.fstat(source.fileno()).st_size - sent
                if available > 0:
                    sent += conn.sendfile(source, sent, min(available, 8 * BLOCK))
                    last_growth = time.monotonic()
                    continue
                if current_copy(partial, final, size)[1] not in (inode, None):
                    source.close()  # the receiver started over in a new file: read that one
                    source = None
                    continue
            if time.monotonic() - last_growth > STALL_S:
                return
            time.sleep(POLL_S)
    finally:
        if source is not None:
            source.close()


def serve(address, partial, final, size, token):
    listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, 0))
    listener.listen(16)
    print(f"port={listener.getsockname()[1]} pid={os.getpid()}", flush=True)

    def answer(conn):
        with conn:
            conn.settimeout(CONNECT_S)
            presented = b""
            while not presented.endswith(b"\n") and len(presented) < 256:
                chunk = conn.recv(256)
                if not chunk:
                    return
                presented += chunk
            if not hmac.compare_digest(presented.strip(), token.encode()):
                return
            conn.settimeout(STALL_S)
            with contextlib.suppress(OSError):
                stream_copy(conn, partial, final, size)

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=Kept.keep, args=(final, size), daemon=True).start()
    while True:  # until the SSH channel (or the workstation by pid) ends us
        time.sleep(HEARTBEAT_S)
        try:
            sys.stdout.write(".\n")
            sys.stdout.flush()
        except OSError:
            os._exit(0)


def receive(address, port, partial, final, size, sha256, token):
    try:
        conn = socket.create_connection((address, port), timeout=CONNECT_S)
    except OSError as exc:
        print(f"cannot connect to {address}:{port}: {exc}", file=sys.stderr)
        return 3
    digest = hashlib.sha256()
    got = 0
    os.makedirs(os.path.dirname(partial) or ".", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)  # a new file, so that a server reading the old one notices
    try:
        with conn, open(partial, "wb") as out:
            conn.settimeout(STALL_S)
            conn.sendall(token.encode() + b"\n")
            buffer = bytearray(BLOCK)
            view = memoryview(buffer)
            said = 0.0
            while got < size:
                n = conn.recv_into(view, min(BLOCK, size - got))
                if not n:
                    break
                out.write(view[:n])
                digest.update(view[:n])
                got += n
                if time.monotonic() - said > 0.5:
                    said = time.monotonic()
                    print(f"got={got}", flush=True)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        print(f"stream failed after {got} bytes: {exc}", file=sys.stderr)
    if got != size:
        os.unlink(partial)
        print(f"the source sent {got} of {size} bytes", file=sys.stderr)
        return 4
    if digest.hexdigest() != sha256:
        os.unlink(partial)
        print(f"sha256 is {digest.hexdigest()}, expected {sha256}", file=sys.stderr)
        return 5
    os.replace(partial, final)
    print(f"got={got}", flush=True)
    return 0


def main(argv):
    token = sys.stdin.readline().strip()
    if argv[0] == "serve":
        address, partial, final, size = argv[1:5]
        serve(address, partial, final, int(size), token)
        return 0
    address, port, partial, final, size, sha256 = argv[1:7]
    return receive(address, int(port), partial, final, int(size), sha256, token)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
