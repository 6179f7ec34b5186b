"""The routes file: what it accepts, and file:line for what it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.auth import load_keys
from proxy.capabilities import estimate_tokens, fold_system_messages
from proxy.routes import RoutesError, load_routes, parse_routes

GOOD = """\
models:
  gemma-3-270m:
    aliases: [gemma]
    backends:
      - {url: "http://127.0.0.1:8081", runtime: llamacpp}
      - {url: "http://10.0.0.7:11434/", runtime: ollama, model: "gemma3:270m"}
    capabilities: {system_role: false, max_context: 4096}
    timeouts: {connect: 2, first_byte: 120, idle: 60}
keys_file: api-keys
"""


def test_reads_the_documented_shape(tmp_path):
    path = tmp_path / "routes.yml"
    path.write_text(GOOD)
    routes = load_routes(path)
    route = routes.models["gemma-3-270m"]
    assert route.aliases == ("gemma",)
    assert [b.url for b in route.backends] == ["http://127.0.0.1:8081", "http://10.0.0.7:11434"]
    assert route.backends[1].model == "gemma3:270m"
    assert route.capabilities.system_role is False
    assert route.capabilities.max_context == 4096
    assert route.timeouts.first_byte == 120
    assert routes.keys_file == tmp_path / "api-keys"
    assert set(routes.lookup()) == {"gemma-3-270m", "gemma"}


def test_send_timeout_and_max_connections(tmp_path):
    defaults = parse_routes("models:\n  m:\n    backends: [{url: 'http://h:1'}]\n", tmp_path)
    assert (defaults.send_timeout, defaults.max_connections) == (60.0, 1000)
    text = (
        "models:\n  m:\n    backends: [{url: 'http://h:1'}]\n"
        "send_timeout: 2.5\nmax_connections: 50\n"
    )
    routes = parse_routes(text, tmp_path)
    assert (routes.send_timeout, routes.max_connections) == (2.5, 50)
    with pytest.raises(RoutesError, match=r"r.yml:5: max_connections must be a positive integer"):
        parse_routes(text.replace("50", "1.5"), tmp_path / "r.yml")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("models: [a\n", 2, "invalid YAML"),
        ("other: 1\n", 1, "unknown key 'other'"),
        ("models:\n  m:\n    aliases: [a]\n", 3, "needs 'backends'"),
        ("models:\n  m:\n    backends: []\n", 3, "non-empty list"),
        ("models:\n  m:\n    backends:\n      - {url: 'http://h:1', runtime: vllm}\n", 4, "vllm"),
        ("models:\n  m:\n    backends:\n      - {url: 'http://h:1/v1'}\n", 4, "no"),
        (
            "models:\n  m:\n    backends: [{url: 'http://h:1'}]\n"
            "    capabilities: {max_context: -5}\n",
            4,
            "positive integer",
        ),
        (
            "models:\n  m:\n    backends: [{url: 'http://h:1'}]\n"
            "  n:\n    aliases: [m]\n    backends: [{url: 'http://h:1'}]\n",
            5,
            "used twice",
        ),
    ],
)
def test_mistakes_name_file_and_line(text, line, words):
    with pytest.raises(RoutesError) as info:
        parse_routes(text, Path("/etc/routes.yml"))
    message = str(info.value)
    assert message.startswith(f"/etc/routes.yml:{line}:"), message
    assert words in message


def test_missing_file(tmp_path):
    with pytest.raises(RoutesError, match="cannot read routes file"):
        load_routes(tmp_path / "nope.yml")


def test_keys_from_file_and_environment(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# ops\nalpha\n\n")
    keys = load_keys(keys_file, {"TOOLKIT_API_KEYS": "beta, gamma"})
    assert len(keys) == 3
    assert keys.allows(b"Bearer alpha") and keys.allows(b"bearer gamma")
    assert not keys.allows(b"Bearer alph") and not keys.allows(None) and not keys.allows(b"alpha")
    assert load_keys(None, {}).allows(None)  # no keys: open


def test_fold_system_messages():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "hello"},
    ]
    folded = fold_system_messages(messages)
    assert [m["role"] for m in folded] == ["user", "assistant"]
    assert folded[0]["content"][0] == {"type": "text", "text": "Be brief.\n\n"}
    assert fold_system_messages([{"role": "user", "content": "x"}]) is None
    assert fold_system_messages([{"role": "system", "content": "s"}]) == [
        {"role": "user", "content": "s"}
    ]


def test_estimate_tokens():
    assert estimate_tokens({"messages": [{"role": "user", "content": "abcd" * 10}]}) == 10
    assert estimate_tokens({"prompt": "abcd" * 5}) == 5
    assert estimate_tokens({"input": ["abcd" * 3, "abcd"]}) == 3  # each input on its own
