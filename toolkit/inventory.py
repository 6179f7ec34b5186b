"""Ansible-compatible inventories: YAML and INI files, group_vars/ and host_vars/, host patterns.

An existing Ansible inventory works unchanged::

    inventory = load_inventory("inventory/example.yml")
    for host in inventory.select("gpu:!gpu2"):
        print(host.name, host.address, host.port, host.user)

Variables are merged the way Ansible merges them (``hash_behaviour=replace``), lowest first:

1. inline vars of ``all``
2. inline vars of the host's other groups, parents before children (then by
   ``ansible_group_priority``, then by name)
3. ``group_vars/all``
4. ``group_vars/<group>`` in the same group order
5. inline host vars (a host listed several times: later entries win)
6. ``host_vars/<host>``

``group_vars/`` and ``host_vars/`` are read beside each inventory source (the directory of a file,
or the directory itself) and then beside the playbook, the playbook's winning; each may be a file
(``.yml``, ``.yaml``, ``.json`` or no extension) or a directory of such files.

Sources: a file (``.yml``/``.yaml``/``.json`` as YAML, ``.ini`` as INI, no extension: YAML when it
parses as an inventory mapping, else INI), a directory (every file in it, sorted, as Ansible), or
several of them, merged in order. ``localhost`` needs no entry: named in a pattern, it is the
implicit local host (``ansible_connection=local``), as in Ansible.

Hosts whose ``ansible_connection`` toolkit cannot speak (``docker``, ``winrm``...) or that ask to
become a user other than root are kept, with the reason in ``Host.unsupported``: a run refuses
them only when a play targets them.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from toolkit.errors import ConfigError, ToolkitError, did_you_mean
from toolkit.positions import Pos, PosDict, load_yaml
from toolkit.variables import is_template, render

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

ADDRESS_KEYS = ("ansible_host", "ansible_ssh_host", "host")
PORT_KEYS = ("ansible_port", "ansible_ssh_port", "port")
USER_KEYS = ("ansible_user", "ansible_ssh_user", "user")
CONNECTION_KEYS = ("ansible_connection", "connection")
BECOME_KEYS = ("ansible_become", "become")
KEY_FILE_KEYS = ("ansible_ssh_private_key_file", "ansible_private_key_file", "key_file")
JUMP_KEYS = ("ansible_jump_host", "jump")
SSH_ARGS_KEYS = ("ansible_ssh_common_args", "ansible_ssh_extra_args")

BECOME_USER_KEYS = ("ansible_become_user",)
# Ansible connection plugins that all mean "OpenSSH-like SSH" to us.
SSH_CONNECTIONS = frozenset({"ssh", "paramiko", "paramiko_ssh", "smart"})
# Read by the inventory itself (merge order), not a variable of the host, as in Ansible.
GROUP_PRIORITY = "ansible_group_priority"
# Files a directory source skips, as Ansible's INVENTORY_IGNORE_EXTS.
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig",
                     ".cfg", ".retry")  # fmt: skip
_VAR_DIRS = ("group_vars", "host_vars")
_IMPLICIT = ("localhost", "127.0.0.1", "::1")  # Ansible's implicit local host names

_TRUE = frozenset({"true", "yes", "on", "1", "y"})
_FALSE = frozenset({"false", "no", "off", "0", "n", ""})

_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_RANGE = re.compile(r"\[([A-Za-z0-9]+):([A-Za-z0-9]+)(?::([0-9]+))?\]")
# An INI host line starting with a bracketed IPv6 address and a port, not a [section].
_IPV6_HOST_LINE = re.compile(r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]:[0-9]+(\s|$)")
_VAR_FILE_SUFFIXES = ("", ".yml", ".yaml", ".json")
_SECTION_KINDS = ("hosts", "vars", "children")
_YAML_GROUP_KEYS = ("hosts", "vars", "children")


class NoHostsMatched(ToolkitError):
    """A host pattern selected nothing; the message names the groups that exist."""

    def __init__(self, pattern: str, term: str | None, groups: list[str], hosts: list[str]):
        self.pattern = pattern
        self.term = term
        self.groups = groups
        if term is not None:
            what = f'no host or group matches "{term}"' + did_you_mean(term, groups + hosts)
        else:
            what = f'host pattern "{pattern}" selects no hosts'
        super().__init__(f"{what}; known groups: {', '.join(groups)}")


# ---------------------------------------------------------------------------------------------
# The model


@dataclass
class Host:
    name: str
    vars: dict
    groups: list[str]
    var_pos: dict[str, Pos] = field(default_factory=dict, repr=False)  # where each var was set
    pos: Pos | None = field(default=None, repr=False)  # where the host was first listed

    def _first(self, keys: tuple[str, ...]):
        """The value of the first of ``keys`` set, its templates rendered with the host's vars."""
        for key in keys:
            value = self.vars.get(key)
            if value is None:
                continue
            if not is_template(value):
                return value
            try:
                return render(value, {"inventory_hostname": self.name, **self.vars})
            except jinja2.TemplateError as exc:
                raise ToolkitError(
                    f'host {self.name}: cannot render {key} "{value}": {exc}'
                ) from None
        return None

    @property
    def address(self) -> str:
        return str(self._first(ADDRESS_KEYS) or self.name)

    @property
    def port(self) -> int:
        value = self._first(PORT_KEYS)
        return 22 if value is None else int(value)

    @property
    def user(self) -> str | None:
        value = self._first(USER_KEYS)
        return None if value is None else str(value)

    @property
    def connection(self) -> str:
        value = self._first(CONNECTION_KEYS)
        if value is None:
            return "local" if self.name in LOCAL_NAMES else "ssh"
        return "local" if value == "local" else "ssh"

    @property
    def unsupported(self) -> str | None:
        """Why toolkit cannot work on this host, or None. Refused only when a play targets it."""
        value = self._first(CONNECTION_KEYS)
        if value is not None and value != "local" and value not in SSH_CONNECTIONS:
            where = self.var_pos.get("ansible_connection") or self.var_pos.get("connection")
            at = f" (set at {where.path}:{where.line})" if where else ""
            return (
                f'host {self.name}: connection "{value}"{at} is not one toolkit can reach; '
                "it speaks ssh and local only"
            )
        become_user = self._first(BECOME_USER_KEYS)
        if self.become and become_user not in (None, "root"):
            return (
                f'host {self.name}: ansible_become_user "{become_user}" is not supported; toolkit '
                "becomes root (sudo) where it must, and works as the login user otherwise"
            )
        return None

    @property
    def become(self) -> bool:
        value = self._first(BECOME_KEYS)
        return False if value is None else _to_bool(value)

    @property
    def key_file(self) -> str | None:
        value = self._first(KEY_FILE_KEYS)
        return None if value is None else str(value)

    @property
    def jump(self) -> str | None:
        """The jump host as ``[user@]host[:port]``, or None."""
        value = self._first(JUMP_KEYS)
        if value is not None:
            return str(value)
        for key in SSH_ARGS_KEYS:
            if self.vars.get(key):
                found = jump_from_ssh_args(str(self.vars[key]))
                if found:
                    return found
        return None

    @property
    def known_hosts(self) -> Path | None:
        """``-o UserKnownHostsFile=PATH`` from the ssh arguments, as Ansible passes it to ssh;
        None means ~/.ssh/known_hosts."""
        for key in SSH_ARGS_KEYS:
            for name, value in ssh_options(str(self.vars.get(key) or "")):
                if name == "userknownhostsfile" and value:
                    return Path(value).expanduser()
        return None


@dataclass
class Group:
    name: str
    hosts: list[str]  # hosts listed directly in this group
    children: list[str]
    vars: dict  # the group's inline vars and its group_vars/ file, the file winning
    pos: Pos | None = field(default=None, repr=False)


@dataclass
class Inventory:
    path: Path  # the first source
    hosts: dict[str, Host]
    groups: dict[str, Group]
    implicit: dict[str, Host] = field(default_factory=dict)  # localhost when not listed
    sources: list[Path] = field(default_factory=list)

    def select(self, pattern: str) -> list[Host]:
        """Hosts matching an Ansible host pattern, in the order Ansible gives them.

        ``all`` or ``*``; a group or host name; globs (``web*``); ``~regex``; a subscript of any
        of these (``web[0]``, ``web[-1]``, ``web[0:2]``, ``web[8:]``); terms joined by ``,`` or
        ``:`` (union), ``&term`` (intersection) and ``!term`` (exclusion), the ``&`` and ``!``
        terms applying to the union of the others whatever their place in the list.
        """
        whole = pattern.strip()
        terms = [whole] if whole in self.hosts else _split_pattern(pattern)
        if not terms:
            raise NoHostsMatched(pattern, None, list(self.groups), list(self.hosts))
        plain = [t for t in terms if t[0] not in "&!"] or ["all"]
        chosen: list[str] = []
        for term in plain:
            chosen += [name for name in self._match(pattern, term) if name not in chosen]
        for term in (t for t in terms if t[0] == "&"):
            keep = set(self._match(pattern, term[1:]))
            chosen = [name for name in chosen if name in keep]
        for term in (t for t in terms if t[0] == "!"):
            try:
                drop = set(self._match(pattern, term[1:]))
            except NoHostsMatched:
                if not _is_wildcard(term[1:]):
                    raise  # a name that exists nowhere is a typo; a glob may match nothing
                drop = set()
            chosen = [name for name in chosen if name not in drop]
        if not chosen:
            raise NoHostsMatched(pattern, None, list(self.groups), list(self.hosts))
        return [self.hosts.get(name) or self.implicit[name] for name in chosen]

    def _match(self, pattern: str, term: str) -> list[str]:
        expr, subscript = _split_subscript(term)
        if subscript is None:
            return self._enumerate(pattern, expr)
        try:
            found = self._enumerate(pattern, expr)
        except NoHostsMatched:
            raise ToolkitError(_subscript_of_nothing(term, expr)) from None
        start, end = subscript
        try:
            if end is None:
                return [found[start]]
            return found[start : (len(found) if end == -1 else end + 1)]
        except IndexError:
            raise ToolkitError(
                f'host pattern "{term}": no host at that index ({expr} holds {len(found)})'
            ) from None

    def _enumerate(self, pattern: str, term: str) -> list[str]:
        if term in self.hosts:
            return [term]
        if term in ("all", "*"):
            return self._hosts_of_group("all")
        if term.startswith("~"):
            try:
                regex = re.compile(term[1:])
            except re.error as exc:
                raise ToolkitError(
                    f'host pattern "{term}": bad regular expression: {exc}'
                ) from None

            def matches(name: str) -> bool:
                return regex.match(name) is not None
        else:

            def matches(name: str) -> bool:
                return fnmatch.fnmatchcase(name, term)

        found: list[str] = []
        groups = [group for group in self.groups if matches(group)]
        for group in groups:
            found += [name for name in self._hosts_of_group(group) if name not in found]
        if not groups or term[0] == "~" or any(ch in term for ch in ".?*["):
            found += [name for name in self.hosts if matches(name) and name not in found]
        if not found and term in LOCAL_NAMES and term in self.implicit:
            return [term]
        if not found and not groups:
            raise NoHostsMatched(pattern, term, list(self.groups), list(self.hosts))
        return found

    def _hosts_of_group(self, name: str) -> list[str]:
        """The group's own hosts, then its children's, level by level (as Ansible lists them)."""
        hosts: list[str] = []
        level, seen = [name], {name}
        while level:
            for group in level:
                hosts += [h for h in self.groups[group].hosts if h not in hosts]
            following = []
            for group in level:
                for child in self.groups[group].children:
                    if child not in seen:
                        seen.add(child)
                        following.append(child)
            level = following
        return hosts


def load_inventory(
    sources: str | Path | list[str | Path],
    *,
    playbook_dir: str | Path | None = None,
    defaults: dict | None = None,
) -> Inventory:
    """Read one inventory source or several, merged in order (see the module's docstring).

    ``playbook_dir``: its ``group_vars/`` and ``host_vars/`` are read last (they win).
    ``defaults``: connection settings from the command line (``ansible_user``,
    ``ansible_ssh_private_key_file``, ``ansible_become``), used by the hosts whose inventory does
    not set them, as Ansible's ``-u``, ``--private-key`` and ``-b``.
    """
    paths = [Path(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    if not paths:
        raise ToolkitError("no inventory given")
    builder = _Builder(paths[0])
    for path in paths:
        builder.read_source(path)
    if playbook_dir is not None:
        builder.add_var_dir(Path(playbook_dir))
    inventory = builder.build()
    inventory.sources = paths
    for host in [*inventory.hosts.values(), *inventory.implicit.values()]:
        for key, value in (defaults or {}).items():
            same = next((keys for keys in _DEFAULTABLE if key in keys), (key,))
            if host._first(same) is None:
                host.vars[key] = value
    return inventory


_DEFAULTABLE = (USER_KEYS, KEY_FILE_KEYS, BECOME_KEYS)


def _is_wildcard(term: str) -> bool:
    return term.startswith("~") or any(ch in term for ch in "*?[")


def _subscript_of_nothing(term: str, expr: str) -> str:
    """What to say when ``web0[1-4]`` was meant as a range of names: in Ansible (and here) it
    picks hosts by position from the group or hosts ``web0`` matches."""
    hint = "use a regex (~...)"
    match = re.fullmatch(r".+\[([0-9]):?-?([0-9])\]", term)
    if match:
        hint = f'use a regex: "~{expr}[{match.group(1)}-{match.group(2)}]"'
    return (
        f'host pattern "{term}": a subscript picks hosts by position from what "{expr}" '
        f"matches, and no host or group matches it; to match host names, {hint}"
    )


def _split_subscript(term: str) -> tuple[str, tuple[int, int | None] | None]:
    """``web[0]`` -> ("web", (0, None)); ``web[1:3]`` -> ("web", (1, 3)); ``web[2:]`` ->
    ("web", (2, -1)). A regex (``~...``) has no subscript."""
    if term.startswith("~"):
        return term, None
    match = re.fullmatch(r"(.+)\[(?:(-?[0-9]+)|([0-9]+)[:-]([0-9]*))\]", term)
    if not match:
        return term, None
    expr, index, start, end = match.groups()
    if index is not None:
        return expr, (int(index), None)
    return expr, (int(start), int(end) if end else -1)


# ---------------------------------------------------------------------------------------------
# Values


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f'"{value}" is not a boolean (use true or false)')


def _check_var(key: str, value: object, pos: Pos) -> None:
    """Refuse values of the keys toolkit reads that it could not use."""
    if value is None:
        return
    if key in PORT_KEYS:
        try:
            port = int(str(value))
        except ValueError:
            raise pos.error(f'{key} must be a port number, got "{value}"') from None
        if not 0 < port < 65536:
            raise pos.error(f"{key} must be between 1 and 65535, got {port}")
    elif key in BECOME_KEYS:
        try:
            _to_bool(value)
        except ValueError as exc:
            raise pos.error(f"{key}: {exc}") from None
    elif key in SSH_ARGS_KEYS or key in JUMP_KEYS:
        try:
            if key in SSH_ARGS_KEYS:
                jump_from_ssh_args(str(value))
            else:
                _check_jump_spec(str(value))
        except ValueError as exc:
            raise pos.error(f"{key}: {exc}") from None


def _check_jump_spec(spec: str) -> None:
    if "," in spec:
        raise ValueError(f'only one jump host is supported, got "{spec}"')
    if not spec or any(ch.isspace() for ch in spec):
        raise ValueError(f'"{spec}" is not a [user@]host[:port] jump host')


def ssh_options(args: str) -> Iterator[tuple[str, str]]:
    """The options in ssh arguments, in order, as ``(lower-cased name, value)``: ``-o Name=value``
    or ``-o "Name value"``, and ``-J host`` as ``proxyjump``."""
    try:
        tokens = shlex.split(args)
    except ValueError as exc:
        raise ValueError(f"cannot parse ssh arguments: {exc}") from None
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token.startswith("-J"):
            yield "proxyjump", token[2:] or following
            continue
        if token == "-o":
            option = following
        elif token.startswith("-o"):
            option = token[2:]
        else:
            continue
        name, _, value = option.partition("=")
        if not value and " " in name:
            name, _, value = name.partition(" ")
        yield name.strip().lower(), value.strip()


def jump_from_ssh_args(args: str) -> str | None:
    """The jump host named in ssh arguments, as ``[user@]host[:port]``.

    Understands ``-J host``, ``-o ProxyJump=host`` and ``-o ProxyCommand="ssh -W %h:%p host"``.
    """
    for name, value in ssh_options(args):
        if name == "proxyjump":
            _check_jump_spec(value)
            return value
        if name == "proxycommand":
            return _jump_from_proxy_command(value)
    return None


_SSH_OPTIONS_WITH_ARGUMENT = set("BbcDEeFIiJLlmOoPpQRSWw")


def _jump_from_proxy_command(command: str) -> str | None:
    tokens = shlex.split(command)
    if not tokens or Path(tokens[0]).name != "ssh" or "-W" not in " ".join(tokens):
        raise ValueError(f'only "ssh -W %h:%p host" proxy commands are supported: {command}')
    user = port = target = None
    index = 1
    while index < len(tokens):
        token = tokens[index]
        if token.startswith("-") and len(token) >= 2:
            letter = token[1]
            value = token[2:]
            if letter in _SSH_OPTIONS_WITH_ARGUMENT and not value:
                index += 1
                value = tokens[index] if index < len(tokens) else ""
            if letter == "p":
                port = value
            elif letter == "l":
                user = value
        elif target is None:
            target = token
        index += 1
    if target is None:
        raise ValueError(f"no host in proxy command: {command}")
    if user and "@" not in target:
        target = f"{user}@{target}"
    return f"{target}:{port}" if port else target


def _parse_ini_value(text: str):
    """An INI value the way Ansible reads it: a Python literal if it is one, else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def expand_host_range(pattern: str) -> list[str]:
    """``web[01:03].lan`` -> web01.lan, web02.lan, web03.lan; ``[a:c]`` and ``[0:10:5]`` too."""
    match = _RANGE.search(pattern)
    if not match:
        return [pattern]
    start, end, step_text = match.group(1), match.group(2), match.group(3)
    step = int(step_text) if step_text else 1
    if step < 1:
        raise ValueError(f'range step must be at least 1 in "{pattern}"')
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        first, last = int(start), int(end)
        items = [str(n).zfill(width) for n in range(first, last + 1, step)]
    elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
        first, last = ord(start), ord(end)
        items = [chr(n) for n in range(first, last + 1, step)]
    else:
        raise ValueError(f'bad range "[{start}:{end}]" in "{pattern}"')
    if first > last:
        raise ValueError(f'range start is after its end in "{pattern}"')
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [head + item + rest for item in items for rest in expand_host_range(tail)]


def _split_host_port(name: str) -> tuple[str, int | None]:
    """``host:2222`` -> (host, 2222); ``[::1]:22`` -> (::1, 22); anything else unchanged."""
    bracketed = re.fullmatch(r"\[([^\]]+)\]:(\d+)", name)
    if bracketed:
        return bracketed.group(1), int(bracketed.group(2))
    plain = re.fullmatch(r"([^:\[\]]+):(\d+)", name)
    if plain:
        return plain.group(1), int(plain.group(2))
    return name, None


def _split_pattern(pattern: str) -> list[str]:
    text = pattern.strip()
    if "," in text:
        parts = text.split(",")
    else:
        parts, depth, current = [], 0, ""
        for ch in text:
            depth += {"[": 1, "]": -1}.get(ch, 0)
            if ch == ":" and depth == 0:
                parts.append(current)
                current = ""
            else:
                current += ch
        parts.append(current)
    return [part.strip() for part in parts if part.strip() not in ("", "&", "!")]


# ---------------------------------------------------------------------------------------------
# Building


@dataclass
class _Vars:
    """Variables from one place, each with the position it was set at."""

    values: dict = field(default_factory=dict)
    pos: dict[str, Pos] = field(default_factory=dict)

    def set(self, key: str, value: object, pos: Pos) -> None:
        _check_var(key, value, pos)
        self.values[key] = value
        self.pos[key] = pos

    def update(self, other: _Vars) -> None:
        self.values.update(other.values)
        self.pos.update(other.pos)


@dataclass
class _GroupDef:
    name: str
    pos: Pos
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    child_pos: dict[str, Pos] = field(default_factory=dict)
    inline: _Vars = field(default_factory=_Vars)
    from_file: _Vars = field(default_factory=_Vars)
    defined: bool = False  # seen as [name], [name:children] or a YAML group, not just [name:vars]


@dataclass
class _HostDef:
    name: str
    pos: Pos
    inline: _Vars = field(default_factory=_Vars)
    from_file: _Vars = field(default_factory=_Vars)


class _Builder:
    def __init__(self, path: Path):
        self.path = path
        self.name = str(path)
        self.groups: dict[str, _GroupDef] = {}
        self.hosts: dict[str, _HostDef] = {}
        self.pending_vars: dict[str, Pos] = {}  # INI [x:vars] of groups not yet defined
        self.var_dirs: list[Path] = []  # where group_vars/ and host_vars/ are looked for
        self.implicit: dict[str, _HostDef] = {}  # localhost & co, when no source lists them
        self.group("all", Pos(self.name, 1, 1))
        self.group("ungrouped", Pos(self.name, 1, 1))

    def implicit_def(self, name: str) -> _HostDef:
        if name not in self.implicit:
            host = _HostDef(name, Pos(self.name, 1, 1))
            host.inline.values["ansible_connection"] = "local"
            self.implicit[name] = host
        return self.implicit[name]

    # -- sources -------------------------------------------------------------------------

    def add_var_dir(self, directory: Path) -> None:
        if directory.resolve() not in [d.resolve() for d in self.var_dirs]:
            self.var_dirs.append(directory)

    def read_source(self, path: Path) -> None:
        if path.is_dir():
            self.add_var_dir(path)
            self._read_directory(path)
        elif path.is_file():
            self.add_var_dir(path.parent)
            self._read_file(path)
        else:
            raise ConfigError(str(path), None, None, "inventory not found")

    def _read_directory(self, directory: Path) -> None:
        """Every file in it, sorted by name, as Ansible reads an inventory directory."""
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(".") or entry.name.endswith(_IGNORED_SUFFIXES):
                continue
            if entry.is_dir():
                if entry.name not in _VAR_DIRS:
                    self._read_directory(entry)
            elif entry.is_file():
                self._read_file(entry)

    def _read_file(self, path: Path) -> None:
        """``.yml``/``.yaml``/``.json`` as YAML; ``.ini`` and the rest as INI, except a file without
        an extension that parses as a YAML inventory (Ansible tries YAML first for those)."""
        self.name = str(path)
        if path.suffix in (".yml", ".yaml", ".json"):
            self.read_yaml(path)
            return
        if not path.suffix:
            try:
                data = load_yaml(path)
            except (ConfigError, UnicodeDecodeError):
                data = None
            if isinstance(data, PosDict) and all(
                isinstance(body, (PosDict, type(None))) for body in data.values()
            ):
                self.read_yaml(path)
                return
        self.read_ini(path)

    # -- shared --------------------------------------------------------------------------

    def group(self, name: str, pos: Pos) -> _GroupDef:
        if not _GROUP_NAME.fullmatch(name):
            raise pos.error(f'invalid group name "{name}" (use letters, digits, "_", "-" and ".")')
        if name not in self.groups:
            self.groups[name] = _GroupDef(name, pos)
        group = self.groups[name]
        group.defined = True
        self.pending_vars.pop(name, None)
        return group

    def add_child(self, parent: str, child: str, pos: Pos) -> None:
        if child == "all":
            raise pos.error('"all" cannot be a child group')
        self.group(child, pos)
        group = self.groups[parent]
        if child not in group.children:
            group.children.append(child)
            group.child_pos[child] = pos

    def add_hosts(self, group: str, pattern: str, pos: Pos) -> list[_HostDef]:
        if not pattern or any(ch.isspace() for ch in pattern):
            raise pos.error(f'invalid host name "{pattern}"')
        try:
            names = expand_host_range(pattern)
        except ValueError as exc:
            raise pos.error(str(exc)) from None
        added = []
        for full in names:
            name, port = _split_host_port(full)
            if name not in self.hosts:
                self.hosts[name] = _HostDef(name, pos)
            host = self.hosts[name]
            if port is not None:
                host.inline.set("ansible_port", port, pos)
            if name not in self.groups[group].hosts:
                self.groups[group].hosts.append(name)
            added.append(host)
        return added

    # -- YAML ----------------------------------------------------------------------------

    def read_yaml(self, path: Path) -> None:
        data = load_yaml(path)
        if data is None:
            return
        if not isinstance(data, PosDict):
            raise ConfigError(
                self.name, 1, 1, "an inventory is a mapping of groups, e.g. all: {hosts: ...}"
            )
        for name, body in data.items():
            self._yaml_group(str(name), body, data.pos_of(name), parent=None)

    def _yaml_group(self, name: str, body, pos: Pos, parent: str | None) -> None:
        self.group(name, pos)
        if parent is not None:
            self.add_child(parent, name, pos)
        if body is None:
            return
        if not isinstance(body, PosDict):
            raise pos.error(f'group "{name}" must be a mapping with hosts, vars or children')
        for key, value in body.items():
            key_pos, value_pos = body.pos_of(key), body.vpos_of(key)
            if key not in _YAML_GROUP_KEYS:
                raise key_pos.error(
                    f'unknown key "{key}" in group "{name}" (expected hosts, vars or children)'
                    + did_you_mean(str(key), _YAML_GROUP_KEYS)
                )
            if value is None:
                continue
            if not isinstance(value, PosDict):
                raise value_pos.error(f'"{key}" of group "{name}" must be a mapping')
            if key == "hosts":
                for host_name, host_vars in value.items():
                    host_pos = value.pos_of(host_name)
                    for host in self.add_hosts(name, str(host_name), host_pos):
                        self._yaml_vars(host_vars, host.inline, host_pos, f'host "{host_name}"')
            elif key == "vars":
                self._yaml_vars(value, self.groups[name].inline, value_pos, f'group "{name}"')
            else:
                for child, child_body in value.items():
                    self._yaml_group(str(child), child_body, value.pos_of(child), parent=name)

    def _yaml_vars(self, data, into: _Vars, pos: Pos, owner: str) -> None:
        if data is None:
            return
        if not isinstance(data, PosDict):
            raise pos.error(f"vars of {owner} must be a mapping of names to values")
        for key, value in data.items():
            if not isinstance(key, str):
                raise data.pos_of(key).error(f'variable name "{key}" must be a string')
            into.set(key, value, data.vpos_of(key))

    # -- INI -----------------------------------------------------------------------------

    def read_ini(self, path: Path) -> None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(self.name, None, None, f"cannot read: {exc.strerror}") from None
        group, kind = "ungrouped", "hosts"
        pending_children: dict[str, list[tuple[str, Pos]]] = {}
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            col = raw.index(line[0]) + 1
            pos = Pos(self.name, lineno, col)
            if line.startswith("[") and not _IPV6_HOST_LINE.match(line):
                group, kind = self._ini_section(line, pos)
            elif kind == "hosts":
                self._ini_host_line(group, raw, line, pos)
            elif kind == "vars":
                key, sep, value = line.partition("=")
                key = key.strip()
                if not sep or not key or any(ch.isspace() for ch in key):
                    raise pos.error(f'expected "name=value" in [{group}:vars], got "{line}"')
                self.groups[group].inline.set(key, _parse_ini_value(value.strip()), pos)
            else:
                child = re.split(r"\s+[#;]", line, maxsplit=1)[0].strip()
                if child in self.groups:
                    self.add_child(group, child, pos)
                else:  # it must be declared later in this file, as Ansible requires
                    pending_children.setdefault(child, []).append((group, pos))
            if kind != "vars" and group in pending_children:
                for parent, child_pos in pending_children.pop(group):
                    self.add_child(parent, group, child_pos)
        if pending_children:
            child, [(parent, pos), *_] = next(iter(pending_children.items()))
            raise pos.error(f'[{parent}:children] names group "{child}", which is never defined')
        if self.pending_vars:
            name, pos = next(iter(self.pending_vars.items()))
            raise pos.error(f"[{name}:vars] is for a group that is never defined")

    def _ini_section(self, line: str, pos: Pos) -> tuple[str, str]:
        match = re.fullmatch(r"\[([^\]]*)\]\s*(?:[#;].*)?", line)
        if not match:
            raise pos.error(f'bad section header "{line}" (expected [group] or [group:kind])')
        name, _, kind = match.group(1).strip().partition(":")
        kind = kind or "hosts"
        if kind not in _SECTION_KINDS:
            raise pos.error(
                f'unknown section kind "{kind}" (expected vars or children)'
                + did_you_mean(kind, _SECTION_KINDS)
            )
        if kind == "vars" and (name not in self.groups or not self.groups[name].defined):
            if not _GROUP_NAME.fullmatch(name):
                raise pos.error(f'invalid group name "{name}"')
            if name not in self.groups:
                self.groups[name] = _GroupDef(name, pos)
            self.pending_vars.setdefault(name, pos)
        else:
            self.group(name, pos)
        return name, kind

    def _ini_host_line(self, group: str, raw: str, line: str, pos: Pos) -> None:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise pos.error(f"cannot parse host line: {exc}") from None
        if not tokens:
            return
        hosts = self.add_hosts(group, tokens[0], pos)
        for token in tokens[1:]:
            col = raw.find(token.split("=", 1)[0]) + 1 or pos.col
            token_pos = Pos(self.name, pos.line, col)
            key, sep, value = token.partition("=")
            if not sep or not key:
                raise token_pos.error(f'expected "name=value" after the host name, got "{token}"')
            for host in hosts:
                host.inline.set(key, _parse_ini_value(value), token_pos)

    # -- group_vars/ and host_vars/ ------------------------------------------------------

    def read_var_files(self) -> None:
        """group_vars/ and host_vars/ of every source, then of the playbook: later ones win."""
        for base in self.var_dirs:
            for name, group in self.groups.items():
                for file in _var_files(base / "group_vars", name):
                    self._read_var_file(file, group.from_file)
            for name in [*self.hosts, *(n for n in _IMPLICIT if n not in self.hosts)]:
                host = self.hosts.get(name) or self.implicit_def(name)
                for file in _var_files(base / "host_vars", name):
                    self._read_var_file(file, host.from_file)

    def _read_var_file(self, file: Path, into: _Vars) -> None:
        data = load_yaml(file)
        if data is None:
            return
        if not isinstance(data, PosDict):
            raise ConfigError(str(file), 1, 1, "a vars file must be a mapping of names to values")
        self._yaml_vars(data, into, data.pos, str(file))

    # -- the result ----------------------------------------------------------------------

    def build(self) -> Inventory:
        self.read_var_files()
        for name in self.groups:
            if name != "all" and not self._parents(name):
                self.add_child("all", name, self.groups[name].pos)
        ungrouped = self.groups["ungrouped"]
        others = {"all", "ungrouped"}
        grouped = {h for g in self.groups.values() if g.name not in others for h in g.hosts}
        ungrouped.hosts = [h for h in self.hosts if h not in grouped]
        depth = self._depths()
        hosts = {}
        for name, definition in self.hosts.items():
            member_of = self._groups_of_host(name)
            ordered = sorted(
                member_of - {"all"},
                key=lambda g: (depth[g], _priority(self.groups[g]), g),
            )
            hosts[name] = self._host(definition, ordered, ["all", *ordered])
        implicit = {
            name: self._host(self.implicit_def(name), [], [])
            for name in _IMPLICIT
            if name not in self.hosts
        }
        groups = {}
        for name, definition in self.groups.items():
            group_vars = _Vars()
            group_vars.update(_without_priority(definition.inline))
            group_vars.update(definition.from_file)
            groups[name] = Group(
                name,
                list(definition.hosts),
                list(definition.children),
                group_vars.values,
                pos=definition.pos,
            )
        return Inventory(self.path, hosts, groups, implicit)

    def _host(self, definition: _HostDef, ordered: list[str], groups: list[str]) -> Host:
        """The host with its variables merged, lowest first (the module's docstring)."""
        all_group = self.groups["all"]
        merged = _Vars()
        merged.update(_without_priority(all_group.inline))
        for group in ordered:
            merged.update(_without_priority(self.groups[group].inline))
        merged.update(all_group.from_file)
        for group in ordered:
            merged.update(self.groups[group].from_file)
        merged.update(definition.inline)
        merged.update(definition.from_file)
        return Host(definition.name, merged.values, groups, var_pos=merged.pos, pos=definition.pos)

    def _parents(self, name: str) -> list[str]:
        return [g.name for g in self.groups.values() if name in g.children]

    def _depths(self) -> dict[str, int]:
        """Longest path from ``all`` to each group; refuses cycles."""
        depth: dict[str, int] = {}

        def visit(name: str, trail: tuple[str, ...]) -> None:
            for child in self.groups[name].children:
                if child in trail:
                    pos = self.groups[name].child_pos.get(child, self.groups[name].pos)
                    cycle = " -> ".join((*trail[trail.index(child) :], child))
                    raise pos.error(f"group cycle: {cycle}")
                if depth.get(child, -1) < len(trail):
                    depth[child] = len(trail)
                    visit(child, (*trail, child))

        depth["all"] = 0
        visit("all", ("all",))
        for name in self.groups:
            if name not in depth:  # unreachable from "all": its parents form a cycle
                visit(name, (name,))
        return depth

    def _groups_of_host(self, host: str) -> set[str]:
        direct = {g.name for g in self.groups.values() if host in g.hosts}
        found: set[str] = set()
        stack = list(direct)
        while stack:
            name = stack.pop()
            if name not in found:
                found.add(name)
                stack.extend(self._parents(name))
        return found | {"all"}


def _priority(group: _GroupDef) -> int:
    """``ansible_group_priority`` set inline (as in Ansible, a group_vars/ file does not set it)."""
    try:
        return int(group.inline.values.get(GROUP_PRIORITY, 1))
    except (TypeError, ValueError):
        return 1


def _without_priority(group_vars: _Vars) -> _Vars:
    """A group's inline vars without ``ansible_group_priority``: it orders groups, it is no var."""
    if GROUP_PRIORITY not in group_vars.values:
        return group_vars
    values = {k: v for k, v in group_vars.values.items() if k != GROUP_PRIORITY}
    return _Vars(values, {k: p for k, p in group_vars.pos.items() if k != GROUP_PRIORITY})


def _var_files(directory: Path, name: str) -> list[Path]:
    """The vars files for ``name`` in group_vars/ or host_vars/, in the order Ansible reads."""
    files: list[Path] = []
    for suffix in _VAR_FILE_SUFFIXES:
        candidate = directory / f"{name}{suffix}"
        if candidate.is_file():
            files.append(candidate)
        elif suffix == "" and candidate.is_dir():
            files.extend(
                sorted(
                    p
                    for p in candidate.rglob("*")
                    if p.is_file()
                    and p.suffix in _VAR_FILE_SUFFIXES
                    and not p.name.startswith(".")
                    and not p.name.endswith("~")
                )
            )
    return files
