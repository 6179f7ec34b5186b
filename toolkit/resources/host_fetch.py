"""A model file the host downloads itself (``fetch: per_host``), all or nothing.

The host downloads the source's URL (``url:``, or the Hub's resolve URL for ``hf:``, honouring
``HF_ENDPOINT`` as the workstation's fetch does) with curl, else python3's urllib, into
``<dest>.partial``; hashes it with ``tk_sha_big``; renames it to ``<dest>`` only when the sha256
matches. Otherwise the partial file is removed and the host fails with both digests. The
workstation downloads nothing for such a model.

A Hugging Face token (``HF_TOKEN``, or the workstation's stored Hub login) reaches the host only
on the command's stdin, as an ``Authorization`` header line that curl reads with ``-H @-`` (or
python3 from its stdin): never on a command line, in the environment of a process, or in a
log. Like the workstation's download, it is sent to the Hub only, not to a CDN the Hub
redirects to (curl drops a custom Authorization header on a redirect to another host or port
since 7.83; the python3 path does the same). A ``url:`` source never gets the token.

While the download runs the host prints ``got=<bytes>`` every second; that is the progress.
"""

from __future__ import annotations

import os
import re
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.hosts.shell import with_prelude
from toolkit.resources.base import HostContext

# Downloads with python3's standard library; argv: URL OUT [--token: a header line on stdin].
_PYTHON_GET = r"""
import sys, urllib.parse, urllib.request
url, out = sys.argv[1], sys.argv[2]
auth = sys.stdin.readline().strip().split(": ", 1)[1] if len(sys.argv) > 3 else ""
host = lambda u: urllib.parse.urlsplit(u).netloc
class Redirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and auth and host(newurl) == host(url):
            new.add_unredirected_header("Authorization", auth)
        return new
request = urllib.request.Request(url)
if auth:
    request.add_unredirected_header("Authorization", auth)
try:
    with urllib.request.build_opener(Redirect).open(request, timeout=60) as r, open(out, "wb") as f:
        for block in iter(lambda: r.read(1 << 20), b""):
            f.write(block)
except Exception as error:
    sys.exit(f"download failed: {error}")
"""

_GOT = re.compile(rb"got=(\d+)")


def source_url(source: dict[str, Any]) -> str:
    """The plain HTTP(S) URL a host downloads a ``url:`` or ``hf:`` source from."""
    if "url" in source:
        return source["url"]
    from huggingface_hub import hf_hub_url

    return hf_hub_url(
        source["hf"],
        source["file"],
        revision=source.get("revision") or "main",
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )


def hub_token(source: dict[str, Any]) -> str | None:
    """The token the workstation's own Hub download would send (hf sources only)."""
    if "hf" not in source:
        return None
    from huggingface_hub import get_token

    return get_token()


def download_script(url: str, sha256: str, dest: str, with_token: bool) -> str:
    """POSIX shell: download into ``<dest>.partial``, check its sha256, rename or remove it."""
    partial = quote(f"{dest}.partial")
    header = "-H @- " if with_token else ""
    token_arg = " --token" if with_token else ""
    return f"""
partial={partial}
mkdir -p "$(dirname "$partial")" && rm -f "$partial" || exit 1
exec 3<&0
if command -v curl >/dev/null 2>&1; then
  curl -fsSL --retry 3 --connect-timeout 30 --speed-limit 1024 --speed-time 120 \\
    {header}-o "$partial" {quote(url)} <&3 &
elif command -v python3 >/dev/null 2>&1; then
  python3 -c {quote(_PYTHON_GET)} {quote(url)} "$partial"{token_arg} <&3 &
else
  echo "the host has neither curl nor python3 to download with" >&2; exit 127
fi
pid=$!
trap 'kill "$pid" 2>/dev/null; rm -f "$partial"' HUP INT TERM
while kill -0 "$pid" 2>/dev/null; do
  printf 'got=%s\\n' "$(tk_stat "$partial" 2>/dev/null | cut -d' ' -f1)"; sleep 1
done
wait "$pid"; rc=$?
if [ "$rc" -ne 0 ]; then rm -f "$partial"; exit "$rc"; fi
got=$(tk_sha_big "$partial")
if [ "$got" = {quote(sha256)} ]; then mv -f "$partial" {quote(dest)}; exit 0; fi
rm -f "$partial"
echo "sha256 of the downloaded file differs: expected {sha256}, got $got (file removed)" >&2
exit 5
"""


def fetch_on_host(ctx: HostContext, source: dict[str, Any], sha256: str, dest: str, what: str):
    """Have the host download ``source`` to ``dest`` itself, verified; raise when it cannot."""
    token = hub_token(source)
    progress = ctx.progress(f"fetch {what} on the host")

    def on_stdout(chunk: bytes) -> None:
        sizes = _GOT.findall(chunk)
        if progress is not None and sizes:
            progress(int(sizes[-1]), None)

    script = download_script(source_url(source), sha256, dest, with_token=bool(token))
    result = ctx.conn.run(
        with_prelude(script, ctx.data_dir),
        stdin=f"Authorization: Bearer {token}\n".encode() if token else None,
        timeout=None,  # curl gives up on a stalled transfer; a big model may take hours
        on_stdout=on_stdout,
    )
    if not result.ok:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ToolkitError(
            f"fetching {what} on the host (fetch: per_host) failed (exit {result.rc}): "
            + " | ".join(line for line in tail if not line.startswith("got="))
        )
