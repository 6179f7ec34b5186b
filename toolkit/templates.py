"""Rendering the Jinja templates in ``templates/`` (undefined variables are errors)."""

from __future__ import annotations

from functools import cache

import jinja2

from toolkit.assets import templates_dir
from toolkit.hosts.connection import quote


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = quote
    return env


def render(template: str, **variables) -> str:
    return environment().get_template(template).render(**variables)
