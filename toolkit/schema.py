"""The small schema every playbook mapping is checked with, so errors read the same everywhere.

``check_mapping(value, {key: Key(...)}, what, at)`` refuses unknown keys (with a did-you-mean),
missing required ones, wrong types and values outside ``choices``, each at its file:line:col.
A value rendered from a template (``Rendered``) is converted first: ``"8100"`` where an integer
is wanted becomes 8100, and one that does not convert names its template and host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from toolkit.errors import did_you_mean
from toolkit.positions import Pos, PosDict


class Rendered(str):
    """A string that came out of a template: remembers the template and the host it was for."""

    template: str
    host: str

    def convert(self, types: tuple[type, ...], what: str, at: Pos) -> Any:
        """To the type the schema wants, when that is an integer or a boolean and not a string."""
        if str in types:
            return str(self)
        text = self.strip()
        if int in types and re.fullmatch(r"[+-]?[0-9]+", text):
            return int(text)
        if bool in types and text.lower() in ("true", "yes", "on", "false", "no", "off"):
            return text.lower() in ("true", "yes", "on")
        raise at.error(
            f'{what} must be {_type_name(types)}; "{self.template}" rendered as {str(self)!r} '
            f"for host {self.host}"
        )


@dataclass(frozen=True)
class Key:
    types: tuple[type, ...]
    required: bool = False
    choices: tuple[str, ...] | None = None


def _type_name(types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", dict: "a mapping",
             list: "a list", float: "a number"}  # fmt: skip
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_mapping(value: Any, schema: dict[str, Key], what: str, at: Pos) -> PosDict:
    """Check that ``value`` is a mapping with only known keys of the right types."""
    if not isinstance(value, dict):
        raise at.error(f"{what} must be a mapping, not {type(value).__name__}")
    mapping: PosDict = value  # type: ignore[assignment]
    for key in mapping:
        if key not in schema:
            raise mapping.pos_of(key).error(
                f'unknown key "{key}" in {what}{did_you_mean(str(key), schema)}'
            )
    for key, rule in schema.items():
        if key not in mapping:
            if rule.required:
                raise mapping.pos.error(f'{what} is missing the required key "{key}"')
            continue
        item = mapping[key]
        if isinstance(item, Rendered):
            item = mapping[key] = item.convert(
                rule.types, f'"{key}" in {what}', mapping.vpos_of(key)
            )
        # YAML booleans are ints in Python; do not let `true` pass for a port.
        wrong_bool = isinstance(item, bool) and bool not in rule.types
        if wrong_bool or not isinstance(item, rule.types):
            raise mapping.vpos_of(key).error(
                f'"{key}" in {what} must be {_type_name(rule.types)}, got {item!r}'
            )
        if rule.choices is not None and item not in rule.choices:
            raise mapping.vpos_of(key).error(
                f'"{key}" in {what} must be one of {", ".join(rule.choices)}, got "{item}"'
                + did_you_mean(str(item), rule.choices)
            )
    return mapping
