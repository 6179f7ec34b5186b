"""The POSIX shell functions every script toolkit runs on a host can use.

``tk_sha`` hashes a small file, ``tk_shas DIR NAME...`` many in one process; ``tk_sha_big`` hashes models with openssl or Python when they are
there (for 1 GiB on our machines, coreutils' sha256sum took 8.9 s, openssl 1.4 s: no SHA
extensions in coreutils); ``tk_stat`` prints "size mtime" on GNU and BSD systems alike;
``tk_http_get URL`` prints a body with curl, wget or python3 (whichever the host has; nothing
when it does not answer in 3 s).
"""

from __future__ import annotations

from toolkit.hosts.connection import quote

PRELUDE = r"""
tk_sha() {
  [ -f "$1" ] || return 0
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else openssl dgst -sha256 "$1" | sed 's/.*= //'; fi
}
tk_shas() {  # DIR NAME...: "<sha256>  <name>" for each file there, in one process
  tk_d=$1; shift
  ( cd "$tk_d" 2>/dev/null || exit 0
    if command -v sha256sum >/dev/null 2>&1; then sha256sum -- "$@" 2>/dev/null
    elif command -v shasum >/dev/null 2>&1; then shasum -a 256 -- "$@" 2>/dev/null
    else for f; do [ -f "$f" ] && printf '%s  %s\n' "$(tk_sha "$f")" "$f"; done; fi; true )
}
tk_sha_big() {
  if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 "$1" | sed 's/.*= //'
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import hashlib,sys
h = hashlib.sha256(); f = open(sys.argv[1], "rb")
for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
print(h.hexdigest())' "$1"
  else tk_sha "$1"; fi
}
tk_stat() { stat -c '%s %Y' "$1" 2>/dev/null || stat -f '%z %m' "$1"; }
tk_http_get() {
  if command -v curl >/dev/null 2>&1; then curl -fsS --max-time 3 "$1" 2>/dev/null
  elif command -v wget >/dev/null 2>&1; then wget -qO- -T 3 "$1" 2>/dev/null
  elif command -v python3 >/dev/null 2>&1; then python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())' "$1" 2>/dev/null
  fi
}
"""


def data_dir_assignment(data_dir: str | None) -> str:
    """Shell that sets TK_DATA: the configured dir (``~/`` expanded on the host) or the XDG one."""
    if not data_dir:
        return 'TK_DATA="${XDG_DATA_HOME:-$HOME/.local/share}/toolkit"'
    if data_dir == "~" or data_dir.startswith("~/"):
        return f'TK_DATA="$HOME"{quote(data_dir[1:])}'
    return f"TK_DATA={quote(data_dir)}"


def with_prelude(script: str, data_dir: str) -> str:
    return f"{PRELUDE}\nTK_DATA={quote(data_dir)}\n{script}"
