"""One HTTP(S) body into a ``BlobWriter``, at the speed of the disk, resuming dropped connections.

The body goes from the socket straight into the writer's buffers (``http.client``'s ``readinto``),
is written from there and hashed on the writer's hashing thread: one copy in, one copy out, and the
sha256 alongside. httpx hands a body over in 64 KiB ``bytes`` that went through h11's buffers; on
a 1 GiB file that alone kept a download near a quarter of curl's speed (bench/download.py), so the
bulk transfer uses the standard library: ``urllib.request`` for redirects, ``*_proxy`` variables
and TLS with the system's certificates, ``http.client`` underneath for the bytes.

Resuming: the writer's file may already hold the start of the body (an earlier attempt or run);
the request then asks for the rest with ``Range``, and a server that answers with the whole body,
or with the wrong piece, makes the writer start over.
"""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from email.message import Message

from toolkit.errors import ToolkitError
from toolkit.models.store import BlobWriter

Progress = Callable[[int, int | None], None]

# Seconds to connect, and to wait for each read of the body.
TIMEOUT_S = 120.0
MAX_STALLED_ATTEMPTS = 5
USER_AGENT = "toolkit"

_OPENER = urllib.request.build_opener()


class _StartOver(Exception):
    """The server would not continue where we stopped; the writer was emptied, ask again."""


def download(
    url: str,
    blob_writer: BlobWriter,
    *,
    label: str,
    progress: Progress,
    headers: Mapping[str, str] | None = None,
) -> None:
    """GET ``url`` into ``blob_writer``, continuing after what it holds.

    ``headers`` go to ``url`` only, never to where it redirects (an Authorization header must
    not follow a redirect to a CDN). Dropped connections are retried from where they stopped,
    as long as each attempt brings bytes; HTTP errors are not retried.
    """
    stalled, last_error = 0, "no attempt"
    while stalled < MAX_STALLED_ATTEMPTS:
        before = blob_writer.size
        try:
            _download_once(url, blob_writer, label, progress, headers or {})
            return
        except _StartOver as error:
            last_error = str(error)
        except urllib.error.HTTPError:
            raise  # handled in _download_once; an HTTPError is also an OSError
        except (OSError, http.client.HTTPException) as error:
            last_error = str(error) or type(error).__name__
        stalled = 0 if blob_writer.size > before else stalled + 1
    raise ToolkitError(
        f"{label}: download failed after {MAX_STALLED_ATTEMPTS} attempts without progress "
        f"({last_error}); the partial file is kept and the next run resumes it"
    )


def _download_once(
    url: str,
    blob_writer: BlobWriter,
    label: str,
    progress: Progress,
    headers: Mapping[str, str],
) -> None:
    offset = blob_writer.size
    request = urllib.request.Request(
        url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    )
    for name, value in headers.items():
        request.add_unredirected_header(name.capitalize(), value)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = _OPENER.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        with error:
            if error.code == 416 and offset:
                if _range_total(error.headers) == offset:
                    return  # an earlier run had received everything but not committed it
                blob_writer.restart()
                raise _StartOver("server refused to resume; starting over") from error
            raise ToolkitError(f"{label}: HTTP {error.code} {error.reason}") from error
    with response:
        if offset and response.status == 200:
            blob_writer.restart()  # the server ignored Range and sends the whole file
        elif offset and _range_start(response.headers) != offset:
            blob_writer.restart()
            raise _StartOver("server resumed at the wrong offset; starting over")
        length = response.headers.get("Content-Length")
        end = blob_writer.size + int(length) if length and length.isdigit() else None
        if end is not None and blob_writer.expected_size is None:
            blob_writer.expect_size(end)
        total = blob_writer.expected_size
        blob_writer.fill_from(response.readinto, lambda size: progress(size, total))
        if end is not None and blob_writer.size < end:
            # http.client's readinto ends quietly when the connection closes early.
            raise http.client.IncompleteRead(b"", end - blob_writer.size)


def _range_start(headers: Message) -> int | None:
    match = re.match(r"bytes (\d+)-", headers.get("Content-Range", ""))
    return int(match[1]) if match else None


def _range_total(headers: Message) -> int | None:
    match = re.match(r"bytes \*/(\d+)", headers.get("Content-Range", ""))
    return int(match[1]) if match else None
