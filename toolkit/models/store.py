"""Content-addressed model store on the workstation.

Blobs live at ``root/blobs/sha256/<hex>``: the name is the checksum, so "is this model in place?" is
a file lookup, never a timestamp comparison. A blob only appears under its final name after its
bytes were hashed and (when a checksum was asked for) matched; anything half-written is a temp file
next to it, removed on failure. Nothing outside this module writes into ``blobs/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from toolkit.errors import ToolkitError

BLOCK_SIZE = 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SAFE_KEY = re.compile(r"[A-Za-z0-9._-]{1,100}")
_TEMP_PREFIX = ".tmp-"
_PARTIAL_SUFFIX = ".partial"


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


class BlobWriter:
    """A temp file that hashes what is written to it; becomes a blob on commit.

    ``offset`` is how many bytes a resumed partial file already held when the writer opened, so a
    downloader knows where to ask the server to continue from.
    """

    def __init__(self, file: BinaryIO, temp_path: Path, digest: hashlib._Hash, offset: int):
        self._file = file
        self.temp_path = temp_path
        self._digest = digest
        self.offset = offset
        self.size = offset
        self.sha256: str | None = None
        self.path: Path | None = None

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._file.write(data)
        self.size += len(data)

    def restart(self) -> None:
        """Drop what a resumed file held, for when the server ignores our Range request."""
        self._file.seek(0)
        self._file.truncate()
        self._digest = hashlib.sha256()
        self.offset = self.size = 0

    def _finish(self) -> str:
        """Flush to disk and return the digest of everything written."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._digest.hexdigest()

    def _discard(self) -> None:
        self._file.close()
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
            actual = blob_writer._finish()
        except BaseException:
            if resume_key is None or blob_writer.size == 0:
                blob_writer._discard()
            else:
                blob_writer._file.close()
            raise
        if expected is not None and actual != expected:
            blob_writer.temp_path.unlink(missing_ok=True)
            raise ChecksumMismatch(expected, actual, source)
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
            return BlobWriter(temp_path.open("xb"), temp_path, hashlib.sha256(), 0)
        temp_path = self.blob_dir / f"{_TEMP_PREFIX}{safe_key(resume_key)}{_PARTIAL_SUFFIX}"
        file = temp_path.open("a+b")
        file.seek(0)
        digest, offset = hashlib.sha256(), 0
        while block := file.read(BLOCK_SIZE):
            digest.update(block)
            offset += len(block)
        return BlobWriter(file, temp_path, digest, offset)

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
