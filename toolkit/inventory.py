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

``group_vars/`` and ``host_vars/`` are read from the directory of the inventory file; each may be
a file (``.yml``, ``.yaml``, ``.json`` or no extension) or a directory of such files.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import ConfigError, ToolkitError, did_you_mean
from toolkit.positions import Pos, PosDict, load_yaml

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

ADDRESS_KEYS = ("ansible_host", "ansible_ssh_host", "host")
PORT_KEYS = ("ansible_port", "ansible_ssh_port", "port")
USER_KEYS = ("ansible_user", "ansible_ssh_user", "user")
CONNECTION_KEYS = ("ansible_connection", "connection")
BECOME_KEYS = ("ansible_become", "become")
KEY_FILE_KEYS = ("ansible_ssh_private_key_file", "ansible_private_key_file", "key_file")
JUMP_KEYS = ("ansible_jump_host", "jump")
SSH_ARGS_KEYS = ("ansible_ssh_common_args", "ansible_ssh_extra_args")

# Ansible connection plugins that all mean "OpenSSH-like SSH" to us.
SSH_CONNECTIONS = frozenset({"ssh", "paramiko", "paramiko_ssh", "smart"})

_TRUE = frozenset({"true", "yes", "on", "1", "y"})
_FALSE = frozenset({"false", "no", "off", "0", "n", ""})

_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_RANGE = re.compile(r"\[([A-Za-z0-9]+):([A-Za-z0-9]+)(?::([0-9]+))?\]")
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
        for key in keys:
            if self.vars.get(key) is not None:
                return self.vars[key]
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
    path: Path
    hosts: dict[str, Host]
    groups: dict[str, Group]

    def select(self, pattern: str) -> list[Host]:
        """Hosts matching an Ansible host pattern, in inventory order.

        ``all`` or ``*``; a group or host name; globs (``web*``); ``~regex``; terms joined by
        ``:`` or ``,`` (union), ``&term`` (intersection) and ``!term`` (exclusion).
        """
        terms = _split_pattern(pattern)
        if not terms:
            raise NoHostsMatched(pattern, None, list(self.groups), list(self.hosts))
        plain = [t for t in terms if t[0] not in "&!"]
        chosen: set[str] = set() if plain else set(self.hosts)
        for term in plain:
            chosen |= self._match(pattern, term)
        for term in (t for t in terms if t[0] == "&"):
            chosen &= self._match(pattern, term[1:])
        for term in (t for t in terms if t[0] == "!"):
            chosen -= self._match(pattern, term[1:])
        selected = [host for name, host in self.hosts.items() if name in chosen]
        if not selected:
            raise NoHostsMatched(pattern, None, list(self.groups), list(self.hosts))
        return selected

    def _match(self, pattern: str, term: str) -> set[str]:
        if term in ("all", "*"):
            return set(self.hosts)
        if term in self.groups:
            return set(self._hosts_of_group(term))
        if term in self.hosts:
            return {term}
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

        found = {name for name in self.hosts if matches(name)}
        for group in self.groups:
            if matches(group):
                found.update(self._hosts_of_group(group))
        if not found and not any(matches(g) for g in self.groups):
            raise NoHostsMatched(pattern, term, list(self.groups), list(self.hosts))
        return found

    def _hosts_of_group(self, name: str) -> Iterator[str]:
        return (host.name for host in self.hosts.values() if name in host.groups)


def load_inventory(path: str | Path) -> Inventory:
    """Read an inventory: ``.yml``/``.yaml`` as YAML, anything else as INI."""
    path = Path(path)
    builder = _Builder(path)
    if path.suffix in (".yml", ".yaml"):
        builder.read_yaml()
    else:
        builder.read_ini()
    return builder.build()


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
    elif key in CONNECTION_KEYS:
        if value != "local" and value not in SSH_CONNECTIONS:
            raise pos.error(
                f'{key} "{value}" is not supported (use local or ssh)'
                + did_you_mean(str(value), ["local", "ssh"])
            )
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
        self.group("all", Pos(self.name, 1, 1))
        self.group("ungrouped", Pos(self.name, 1, 1))

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

    def read_yaml(self) -> None:
        data = load_yaml(self.path)
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

    def read_ini(self) -> None:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise ConfigError(self.name, None, None, f"cannot read: {exc.strerror}") from None
        group, kind = "ungrouped", "hosts"
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            col = raw.index(line[0]) + 1
            pos = Pos(self.name, lineno, col)
            if line.startswith("["):
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
                self.add_child(group, child, pos)
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
        base = self.path.parent
        for name, group in self.groups.items():
            for file in _var_files(base / "group_vars", name):
                self._read_var_file(file, group.from_file)
        for name, host in self.hosts.items():
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
        all_group = self.groups["all"]
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
            merged = _Vars()
            merged.update(all_group.inline)
            for group in ordered:
                merged.update(self.groups[group].inline)
            merged.update(all_group.from_file)
            for group in ordered:
                merged.update(self.groups[group].from_file)
            merged.update(definition.inline)
            merged.update(definition.from_file)
            hosts[name] = Host(
                name, merged.values, ["all", *ordered], var_pos=merged.pos, pos=definition.pos
            )
        groups = {}
        for name, definition in self.groups.items():
            group_vars = _Vars()
            group_vars.update(definition.inline)
            group_vars.update(definition.from_file)
            groups[name] = Group(
                name,
                list(definition.hosts),
                list(definition.children),
                group_vars.values,
                pos=definition.pos,
            )
        return Inventory(self.path, hosts, groups)

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
    value = group.from_file.values.get(
        "ansible_group_priority", group.inline.values.get("ansible_group_priority", 1)
    )
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


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
