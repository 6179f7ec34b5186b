"""Content-addressed model store on the workstation.

Blobs live at ``root/blobs/sha256/<hex>``: the name is the checksum, so "is this model in place?" is
a file lookup, never a timestamp comparison. A blob only appears under its final name after its
bytes were hashed and (when a checksum was asked for) matched; anything half-written is a temp file
next to it, removed on failure. Nothing outside this module writes into ``blobs/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import queue
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from toolkit.errors import ToolkitError

BLOCK_SIZE = 1024 * 1024
# A stream (a download) goes through STREAM_BUFFERS buffers of this size, each read, written and
# hashed in turn. Measured with bench/download.py (1 GiB from a local nginx, share of curl's
# speed): 64 KiB 0.71, 256 KiB 0.84, 512 KiB 0.92, 1 MiB 0.98-1.00 (the least CPU per GiB too),
# 2 MiB 0.70 (the buffer no longer stays in the CPU's caches between the read, write and hash).
STREAM_BUFFER_SIZE = 1024 * 1024
STREAM_BUFFERS = 16
# How much a file grows between two background syncs (see _Writeback).
WRITEBACK_BYTES = 64 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SAFE_KEY = re.compile(r"[A-Za-z0-9._-]{1,100}")
_TEMP_PREFIX = ".tmp-"
_PARTIAL_SUFFIX = ".partial"


DISK_MARGIN = 256 * 1024 * 1024  # left free on the workstation's disk after a download


class NoRoom(ToolkitError):
    """The store's disk cannot hold a file, known before its first byte."""


class ChecksumMismatch(ToolkitError):
    """The bytes we received are not the ones the playbook pinned."""

    def __init__(self, expected: str, actual: str, source: str = ""):
        self.expected = expected
        self.actual = actual
        self.source = source
        origin = f" for {source}" if source else ""
        super().__init__(
            f"checksum mismatch{origin}: expected sha256 {expected}, got {actual}; "
            "the download was discarded"
        )


def normalize_sha256(value: str) -> str:
    """Lower-case a hex digest and reject anything that is not one, before it becomes a path."""
    digest = value.strip().lower()
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {value!r}")
    return digest


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in 1 MiB blocks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as file:
        while block := file.read(BLOCK_SIZE):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


class _Hasher:
    """sha256 on a thread of its own, fed buffers in order.

    hashlib releases the GIL for large buffers, so the hash of one buffer is computed while the
    feeding thread reads and writes the next: a download costs max(network, hash) instead of
    their sum. The queue is bounded, so a producer faster than the hash waits for it.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._cancelled = False
        self._queue: queue.Queue[tuple[bytes | memoryview, Callable[[], None] | None] | None]
        self._queue = queue.Queue(maxsize=STREAM_BUFFERS)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def feed(self, data: bytes | memoryview, done: Callable[[], None] | None = None) -> None:
        """Hash ``data`` after what was fed before; ``done`` is called once it was read."""
        self._queue.put((data, done))

    def hexdigest(self) -> str:
        """The digest of everything fed, once the thread has caught up."""
        self._stop()
        return self._digest.hexdigest()

    def cancel(self) -> None:
        """Stop without hashing what is still queued (its ``done`` callbacks still run)."""
        self._cancelled = True
        self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            data, done = item
            if not self._cancelled:
                self._digest.update(data)
            if done is not None:
                done()


class _Writeback:
    """Starts writing a growing file to disk while it is still being written.

    Left alone, Linux keeps a freshly written file in dirty pages until the final fsync (a file
    smaller than ``dirty_background_ratio`` of memory is not written back for 30 s), so that fsync
    waits for the whole file to reach the disk after the download. Syncing every ``WRITEBACK_BYTES``
    on a thread of its own keeps the disk busy during the download and the final fsync short,
    and bounds the dirty memory a 30 GB model holds.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._asked = self._synced = 0
        self._closed = False
        self._error: OSError | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def advance(self, size: int) -> None:
        """The file now holds ``size`` bytes; start a sync when enough are new."""
        if size - self._asked < WRITEBACK_BYTES:
            return
        with self._changed:
            self._asked = size
            self._changed.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop; raise what a background sync reported (the final fsync might not see it again)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed and self._asked <= self._synced:
                    self._changed.wait()
                if self._closed:
                    return
                target = self._asked
            try:
                _data_sync(self._fd)
            except OSError as error:
                self._error = error
                return
            self._synced = target


class BlobWriter:
    """A temp file that is hashed while it is written; becomes a blob on commit.

    ``offset`` is how many bytes a resumed partial file already held when the writer opened, so a
    downloader knows where to ask the server to continue from. ``expected_size``, once a source
    announces it (``expect_size``), is checked at commit and is there for a free-space check.
    """

    def __init__(self, fd: int, temp_path: Path):
        self._fd = fd
        self.temp_path = temp_path
        self._hasher = _Hasher()
        self._writeback = _Writeback(fd)
        self._buffers: queue.Queue[bytearray] | None = None
        self.offset = 0
        self.size = 0
        self.expected_size: int | None = None
        self.sha256: str | None = None
        self.path: Path | None = None

    def expect_size(self, size: int) -> None:
        """The final size, as the source announced it before sending the bytes: refused at
        once, with the numbers, when the store's disk cannot hold what is still to come."""
        self.expected_size = size
        free = os.statvfs(self.temp_path.parent)
        room = free.f_bavail * free.f_frsize
        needed = size - self.size + DISK_MARGIN
        if needed > room:
            raise NoRoom(
                f"not enough disk for the download: {(size - self.size) / 1e6:.0f} MB to come + "
                f"{DISK_MARGIN / 1e6:.0f} MB margin, {room / 1e6:.0f} MB free under "
                f"{self.temp_path.parent}; nothing was downloaded"
            )

    def write(self, data: bytes) -> None:
        """Append ``data``; it is hashed on the hashing thread, so it must not change: bytes."""
        if not isinstance(data, bytes):
            data = bytes(data)
        self._write_all(memoryview(data))
        self._hasher.feed(data)

    def fill_from(
        self, readinto: Callable[[memoryview], int], written: Callable[[int], None] | None = None
    ) -> None:
        """Append what ``readinto`` gives until it returns 0, through the writer's own buffers.

        Each buffer is filled, written to the file, then handed to the hashing thread and reused
        once hashed: one copy in (from the socket), one copy out (to the page cache), no bytes
        objects. ``written(size)`` is called after each buffer. What ``readinto`` raises goes
        through; the bytes written before it stay counted in ``size``.
        """
        if self._buffers is None:
            self._buffers = queue.Queue()
            for _ in range(STREAM_BUFFERS):
                self._buffers.put(bytearray(STREAM_BUFFER_SIZE))
        buffers = self._buffers
        while True:
            buffer = buffers.get()
            view = memoryview(buffer)
            try:
                count = readinto(view)
            except BaseException:
                buffers.put(buffer)
                raise
            if not count:
                buffers.put(buffer)
                return
            self._write_all(view[:count])
            self._hasher.feed(view[:count], functools.partial(buffers.put, buffer))
            if written is not None:
                written(self.size)

    def restart(self) -> None:
        """Drop what a resumed file held, for when the server ignores our Range request."""
        self._hasher.cancel()
        self._writeback.close()
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hasher = _Hasher()
        self._writeback = _Writeback(self._fd)
        self.offset = self.size = 0

    def _write_all(self, view: memoryview) -> None:
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self.size += written
        self._writeback.advance(self.size)

    def _absorb_existing(self) -> None:
        """Hash what a resumed partial file already holds and continue after it."""
        while block := os.read(self._fd, BLOCK_SIZE):
            self._hasher.feed(block)
            self.size += len(block)
        self.offset = self.size

    def _finish(self) -> str:
        """Make the bytes durable and return the digest of everything written.

        The fsync runs while the hashing thread finishes its last buffers.
        """
        try:
            self._writeback.close()
            os.fsync(self._fd)
        except BaseException:
            self._close()
            raise
        os.close(self._fd)
        return self._hasher.hexdigest()

    def _close(self) -> None:
        """Stop the threads and close the file, keeping it (a resumable partial download)."""
        self._hasher.cancel()
        with contextlib.suppress(OSError):
            self._writeback.close()
        os.close(self._fd)

    def _discard(self) -> None:
        self._close()
        self.temp_path.unlink(missing_ok=True)


class ModelStore:
    """Blobs named by their sha256 under one root directory, plus locks and original names."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs" / "sha256"
        self.lock_dir = self.root / "locks"
        self.name_dir = self.root / "names"
        self.incoming_dir = self.root / "incoming"

    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / normalize_sha256(sha256)

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    @contextlib.contextmanager
    def writer(
        self,
        expected_sha256: str | None,
        *,
        source: str = "",
        resume_key: str | None = None,
    ) -> Iterator[BlobWriter]:
        """Write a blob through a temp file in the blob directory; commit it on a clean exit.

        With ``resume_key`` the temp file keeps a stable name and survives an exception (other
        than a checksum mismatch), so the next attempt can continue where this one stopped.
        Without it, any failure removes the temp file.
        """
        expected = normalize_sha256(expected_sha256) if expected_sha256 else None
        blob_writer = self._open_writer(resume_key)
        try:
            yield blob_writer
        except BaseException:
            if resume_key is None or blob_writer.size == 0:
                blob_writer._discard()
            else:
                blob_writer._close()
            raise
        try:
            actual = blob_writer._finish()
        except BaseException:
            blob_writer.temp_path.unlink(missing_ok=True)
            raise
        if expected is not None and actual != expected:
            blob_writer.temp_path.unlink(missing_ok=True)
            raise ChecksumMismatch(expected, actual, source)
        if blob_writer.expected_size is not None and blob_writer.size != blob_writer.expected_size:
            blob_writer.temp_path.unlink(missing_ok=True)
            origin = f"{source}: " if source else ""
            raise ToolkitError(
                f"{origin}received {blob_writer.size} bytes where {blob_writer.expected_size} "
                "were announced; the download was discarded"
            )
        blob_writer.path = self._commit(blob_writer.temp_path, actual)
        blob_writer.sha256 = actual

    def adopt(
        self, path: Path, expected_sha256: str | None, *, source: str = "", move: bool = False
    ) -> tuple[str, int]:
        """Bring an existing file into the store without a second full copy where possible.

        ``move=True`` renames the file in (it must be on the store's filesystem, e.g. under
        ``incoming/``); otherwise it is hard-linked, or copied when linking is not possible.
        Returns (sha256, size). On a mismatch nothing is left in the store.
        """
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        temp_path = self._temp_path()
        if move:
            os.replace(path, temp_path)
        elif not _try_link(path, temp_path):
            return self._copy_in(path, expected_sha256, source)
        try:
            actual, size = hash_file(temp_path)
            if expected_sha256 and actual != normalize_sha256(expected_sha256):
                raise ChecksumMismatch(normalize_sha256(expected_sha256), actual, source)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        self._commit(temp_path, actual)
        return actual, size

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive flock on ``locks/<key>.lock``: one fetch per model at a time.

        flock locks belong to the open file, so this also serialises threads of one process.
        """
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with (self.lock_dir / f"{safe_key(key)}.lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def remember_name(self, sha256: str, filename: str) -> None:
        """Record the original file name, so a cached fetch can report it without a network call."""
        self.name_dir.mkdir(parents=True, exist_ok=True)
        (self.name_dir / normalize_sha256(sha256)).write_text(filename + "\n", encoding="utf-8")

    def name_of(self, sha256: str) -> str | None:
        record = self.name_dir / normalize_sha256(sha256)
        return record.read_text(encoding="utf-8").strip() if record.is_file() else None

    def _open_writer(self, resume_key: str | None) -> BlobWriter:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        if resume_key is None:
            temp_path = self._temp_path()
            fd = os.open(temp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            return BlobWriter(fd, temp_path)
        temp_path = self.blob_dir / f"{_TEMP_PREFIX}{safe_key(resume_key)}{_PARTIAL_SUFFIX}"
        fd = os.open(temp_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        blob_writer = BlobWriter(fd, temp_path)
        try:
            blob_writer._absorb_existing()
        except BaseException:
            blob_writer._close()
            raise
        return blob_writer

    def _copy_in(self, path: Path, expected: str | None, source: str) -> tuple[str, int]:
        with self.writer(expected, source=source) as blob_writer, path.open("rb") as file:
            while block := file.read(BLOCK_SIZE):
                blob_writer.write(block)
        assert blob_writer.sha256 is not None
        return blob_writer.sha256, blob_writer.size

    def _temp_path(self) -> Path:
        return self.blob_dir / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"

    def _commit(self, temp_path: Path, sha256: str) -> Path:
        """Rename into place and make the rename durable."""
        final = self.blob_path(sha256)
        os.replace(temp_path, final)
        dir_fd = os.open(self.blob_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final


def safe_key(key: str) -> str:
    """A file-name-safe form of a lock or resume key; anything unusual becomes its digest."""
    if _SAFE_KEY.fullmatch(key) and not key.startswith("."):
        return key
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _data_sync(fd: int) -> None:
    """fdatasync where the platform has it (Linux), fsync elsewhere (macOS)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def _try_link(source: Path, target: Path) -> bool:
    """Hard-link ``source`` to ``target``; False when the filesystem will not (other device...)."""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


def controller_store() -> ModelStore:
    """The workstation's store: ``$TOOLKIT_CACHE_DIR/models`` (default ``~/.cache/toolkit``)."""
    from toolkit.workstation import cache_dir

    return ModelStore(cache_dir() / "models")
