"""A host's variables as templates see them: values that are templates are rendered when read.

Ansible resolves variables lazily and to any depth: with ``app_dir: /srv/app`` and
``models_dir: "{{ app_dir }}/models"``, ``"{{ models_dir }}/x.gguf"`` renders as
``/srv/app/models/x.gguf``. ``LazyVars`` does the same: reading ``models_dir`` renders it with the
same variables (so ``app_dir`` may itself be a template), once; a variable that refers back to
itself is an error naming the chain, and so is an undefined one, but only when it is read, so an
unused variable that could not render does no harm.

    variables = LazyVars({"app_dir": "/srv/app", "models_dir": "{{ app_dir }}/models"})
    render("{{ models_dir }}/x.gguf", variables)  # '/srv/app/models/x.gguf'
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import jinja2


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


class LazyVars(Mapping):
    """Variables whose templated values (strings, or inside lists and mappings) render on read."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)
        self._rendered: dict[str, Any] = {}
        self._local = threading.local()  # the chain being rendered, per thread

    def __getitem__(self, key: str) -> Any:
        if key in self._rendered:
            return self._rendered[key]
        if key not in self._values:
            return environment().globals[key]  # range, dict, lipsum... or KeyError
        chain: list[str] = self._local.__dict__.setdefault("chain", [])
        if key in chain:
            loop = " -> ".join([*chain[chain.index(key) :], key])
            raise jinja2.TemplateError(f"variable {key} refers to itself: {loop}")
        chain.append(key)
        try:
            value = self._render_value(self._values[key])
        except jinja2.TemplateError as exc:
            if len(chain) > 1 or "refers to itself" in str(exc):
                raise
            raise jinja2.TemplateError(f"{exc} (in variable {key})") from None
        finally:
            chain.pop()
        self._rendered[key] = value
        return value

    def _render_value(self, value: Any) -> Any:
        if is_template(value):
            return render(value, self)
        if isinstance(value, list):
            return [self._render_value(item) for item in value]
        if isinstance(value, dict):
            return {key: self._render_value(item) for key, item in value.items()}
        return value

    def __contains__(self, key: object) -> bool:  # without rendering anything
        return key in self._values or key in environment().globals

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def render(text: str, variables: Mapping[str, Any]) -> str:
    """Render ``text`` with ``variables``, reading (and so rendering) only the ones it uses."""
    lazy = variables if isinstance(variables, LazyVars) else LazyVars(variables)
    template = environment().from_string(text)
    context = template.new_context(lazy, shared=True)  # shared: read from ``lazy``, not a copy
    return environment().concat(template.root_render_func(context))
