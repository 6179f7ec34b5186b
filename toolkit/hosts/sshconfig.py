"""ssh_config, read the way OpenSSH (and so Ansible) reads it, for one inventory host.

Which file: ``-F FILE`` in ``ansible_ssh_common_args``/``ansible_ssh_extra_args`` (as Ansible
passes it to ssh), else the file named by ``$TOOLKIT_SSH_CONFIG``, else ``~/.ssh/config`` then
``/etc/ssh/ssh_config``. ``-F none`` reads no file. ``Include`` lines are followed (globs, paths
relative to ``~/.ssh``), since paramiko's parser does not.

Precedence, as OpenSSH's "first obtained value wins": the inventory's own ``ansible_*`` values
(``ansible_port``, ``ansible_user``, ``ansible_ssh_private_key_file``, ``ansible_jump_host``)
come first, as Ansible puts them first on ssh's command line; then the ``-o``/``-J``/``-i``/
``-p``/``-l`` options of the ssh arguments; then the files; then the defaults. This is done by
putting a ``Host <alias>`` block holding those values in front of the files' text, so that
paramiko's lookup (``Match``, ``%h``/``%p``/``%r`` tokens in ``ProxyCommand``...) sees the final
values. The alias looked up is ``ansible_host`` (else the inventory name), the argument Ansible
gives ssh.
"""

from __future__ import annotations

import glob
import os
import shlex
import threading
from collections.abc import Iterable
from pathlib import Path

import paramiko

ENV_VAR = "TOOLKIT_SSH_CONFIG"
DEFAULT_FILES = ("~/.ssh/config", "/etc/ssh/ssh_config")
MAX_INCLUDE_DEPTH = 16  # as OpenSSH's READCONF_MAX_DEPTH

# ssh's one-letter flags that carry a value, and the ssh_config option each one sets
_FLAG_OPTIONS = {"J": "ProxyJump", "i": "IdentityFile", "p": "Port", "l": "User"}
_FLAGS_WITH_VALUE = set("BbcDEeFIiJLlmOoPpQRSWw")

_cache: dict[tuple[str, float], str] = {}
_cache_lock = threading.Lock()


class SSHConfigError(ValueError):
    """The ssh_config or the ssh arguments cannot be used."""


def parse_ssh_args(args: str) -> tuple[list[tuple[str, str]], str | None]:
    """ssh command-line arguments -> ([(Option, value)...] in order, the -F file or None)."""
    try:
        tokens = shlex.split(args)
    except ValueError as exc:
        raise SSHConfigError(f"cannot parse ssh arguments {args!r}: {exc}") from None
    options: list[tuple[str, str]] = []
    config_file = None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("-") or len(token) < 2:
            continue
        letter, value = token[1], token[2:]
        if letter not in _FLAGS_WITH_VALUE:
            continue
        if not value:
            if index >= len(tokens):
                raise SSHConfigError(f"ssh argument -{letter} needs a value: {args!r}")
            value = tokens[index]
            index += 1
        if letter == "o":
            name, sep, rest = value.partition("=")
            if not sep:
                name, _, rest = value.strip().partition(" ")
            options.append((name.strip(), rest.strip()))
        elif letter == "F":
            config_file = value
        elif letter in _FLAG_OPTIONS:
            options.append((_FLAG_OPTIONS[letter], value))
    return options, config_file


def config_files(explicit: str | None) -> list[Path]:
    """The files to read, in order: ``-F``, else $TOOLKIT_SSH_CONFIG, else the defaults."""
    chosen = explicit or os.environ.get(ENV_VAR) or None
    if chosen is not None:
        if chosen == "none":
            return []
        path = Path(chosen).expanduser()
        if not path.is_file():
            source = "-F" if explicit else f"${ENV_VAR}"
            raise SSHConfigError(f"ssh config file {path} (from {source}) does not exist")
        return [path]
    return [Path(p).expanduser() for p in DEFAULT_FILES if Path(p).expanduser().is_file()]


def build(
    alias: str, first: Iterable[tuple[str, str]], files: Iterable[Path]
) -> paramiko.SSHConfig:
    """One config: ``Host alias`` with ``first`` (in precedence order), then the files."""
    lines = [f"Host {_pattern_literal(alias)}"]
    for name, value in first:
        if "\n" in value or "\r" in value:
            raise SSHConfigError(f"ssh option {name} has a line break in its value")
        lines.append(f"    {name} {value}")
    text = "\n".join(lines) + "\n\n" + "".join(_read(path) for path in files)
    try:
        return paramiko.SSHConfig.from_text(text)
    except Exception as exc:  # paramiko raises ConfigParseError, ValueError...
        raise SSHConfigError(f"ssh config for {alias}: {exc}") from None


def lookup(config: paramiko.SSHConfig, alias: str) -> paramiko.SSHConfigDict:
    try:
        return config.lookup(alias)
    except Exception as exc:  # a Match exec, canonicalization, a bad token...
        raise SSHConfigError(f"ssh config for {alias}: {exc}") from None


def _pattern_literal(alias: str) -> str:
    if any(ch in alias for ch in "*?!, \t"):
        raise SSHConfigError(f'host "{alias}" cannot be looked up in ssh_config')
    return alias


def _read(path: Path, depth: int = 0) -> str:
    """The file's text with its Include lines replaced by the included files' text."""
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError as exc:
        raise SSHConfigError(f"cannot read ssh config {path}: {exc.strerror}") from None
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    try:
        raw = path.read_text(errors="replace")
    except OSError as exc:
        raise SSHConfigError(f"cannot read ssh config {path}: {exc.strerror}") from None
    out = []
    for line in raw.splitlines():
        words = line.strip().replace("=", " ", 1).split(None, 1)
        if words and words[0].lower() == "include" and len(words) == 2:
            if depth >= MAX_INCLUDE_DEPTH:
                raise SSHConfigError(f"{path}: Include nested too deeply")
            for pattern in shlex.split(words[1]):
                pattern = os.path.expanduser(pattern)
                if not os.path.isabs(pattern):
                    base = "~/.ssh" if _is_user_file(path) else "/etc/ssh"
                    pattern = os.path.join(os.path.expanduser(base), pattern)
                for included in sorted(glob.glob(pattern)):
                    out.append(_read(Path(included), depth + 1))
            continue
        out.append(line + "\n")
    text = "".join(out) + "\n"
    with _cache_lock:
        _cache[key] = text
    return text


def _is_user_file(path: Path) -> bool:
    return not str(path).startswith("/etc/")
