"""YAML loading that remembers where every mapping, list and key came from.

``load_yaml(path)`` returns plain dicts, lists and scalars, but the dicts and lists are
``PosDict`` / ``PosList`` that know the file, line and column of themselves and of each key or
item, so validation can say ``site.yml:12:7: unknown key "runtme"``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from toolkit.errors import ConfigError


class Pos:
    __slots__ = ("path", "line", "col")

    def __init__(self, path: str, line: int, col: int):
        self.path, self.line, self.col = path, line, col

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.path, self.line, self.col, message)


class PosDict(dict):
    """A dict with ``pos`` (its own position) and ``key_pos[key]`` / ``value_pos[key]``."""

    pos: Pos
    key_pos: dict
    value_pos: dict

    def pos_of(self, key) -> Pos:
        return self.key_pos.get(key, self.pos)

    def vpos_of(self, key) -> Pos:
        return self.value_pos.get(key, self.pos_of(key))


class PosList(list):
    pos: Pos
    item_pos: list

    def pos_of(self, index: int) -> Pos:
        return self.item_pos[index] if index < len(self.item_pos) else self.pos


def empty_mapping(pos: Pos) -> PosDict:
    """An empty mapping that reports errors at ``pos`` (for a key given with no value)."""
    empty = PosDict()
    empty.pos, empty.key_pos, empty.value_pos = pos, {}, {}
    return empty


class _Loader(yaml.SafeLoader):
    pass


def _mark(loader, node) -> Pos:
    return Pos(loader.name, node.start_mark.line + 1, node.start_mark.column + 1)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> PosDict:
    loader.flatten_mapping(node)
    result = PosDict()
    result.pos = _mark(loader, node)
    result.key_pos, result.value_pos = {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise ConfigError(
                loader.name,
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
                f'duplicate key "{key}"',
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_pos[key] = _mark(loader, key_node)
        result.value_pos[key] = _mark(loader, value_node)
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> PosList:
    result = PosList(loader.construct_object(child, deep=True) for child in node.value)
    result.pos = _mark(loader, node)
    result.item_pos = [_mark(loader, child) for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml_text(text: str, name: str):
    loader = _Loader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise ConfigError(name, line, col, f"invalid YAML: {exc.problem or exc}") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path):
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), None, None, f"cannot read: {exc.strerror}") from None
    return load_yaml_text(text, str(path))
