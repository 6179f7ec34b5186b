"""Read what a GGUF file says about itself: architecture, context, quantization, chat template.

Only the header's key/value section is read; tensor data (almost all of the file) is never
touched, so this costs a few milliseconds even for a large model. Arrays (the tokenizer's
vocabulary) are skipped over, keeping only their length.

Layout (little-endian): magic ``GGUF``, uint32 version, tensor count and kv count (uint64 since
version 2, uint32 in version 1), then kv pairs: string key, uint32 value type, value.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

MAGIC = b"GGUF"

# value type id -> struct format of a fixed-size scalar
_SCALARS: dict[int, str] = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_STRING, _ARRAY = 8, 9

# llama.cpp's llama_ftype values, as stored in general.file_type.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}


@dataclass
class GGUFInfo:
    """The metadata toolkit acts on; ``parameters`` holds every scalar key for the curious."""

    architecture: str
    name: str | None
    context_length: int | None
    file_type: str | None
    chat_template: str | None
    parameters: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """Little-endian reads over a memory map, failing with a clear error instead of short reads.

    A memory map only pages in what is read, so the tensor data after the header costs nothing,
    and skipping a 262k-entry vocabulary is a loop over offsets rather than file calls.
    """

    def __init__(self, buffer: mmap.mmap, path: Path):
        self._buffer = buffer
        self._path = path
        self.position = 0

    def take(self, count: int) -> bytes:
        start = self._advance(count)
        return self._buffer[start : start + count]

    def skip(self, count: int) -> None:
        self._advance(count)

    def scalar(self, fmt: str) -> Any:
        start = self._advance(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self._buffer, start)[0]

    def string(self, length_fmt: str) -> str:
        return self.take(self.scalar(length_fmt)).decode("utf-8", errors="replace")

    def _advance(self, count: int) -> int:
        start = self.position
        if count < 0 or start + count > len(self._buffer):
            raise ToolkitError(f"{self._path}: GGUF header is truncated or corrupt")
        self.position = start + count
        return start


def read_gguf(path: Path) -> GGUFInfo:
    """Parse the header of the GGUF file at ``path``; ToolkitError when it is not one."""
    path = Path(path)
    with path.open("rb") as file:
        if file.read(4) != MAGIC:
            raise ToolkitError(f"{path}: not a GGUF file")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            values = _read_header(_Reader(buffer, path), path)
    return _info_from(values)


def _read_header(reader: _Reader, path: Path) -> dict[str, Any]:
    reader.skip(len(MAGIC))
    version = reader.scalar("<I")
    if version not in (1, 2, 3):
        raise ToolkitError(f"{path}: unsupported GGUF version {version}")
    count_fmt = "<I" if version == 1 else "<Q"
    reader.scalar(count_fmt)  # tensor count: not needed
    kv_count = reader.scalar(count_fmt)
    return dict(_read_kv(reader, count_fmt) for _ in range(kv_count))


def _read_kv(reader: _Reader, count_fmt: str) -> tuple[str, Any]:
    key = reader.string(count_fmt)
    value_type = reader.scalar("<I")
    if value_type == _ARRAY:
        return key, _ArrayLength(_skip_array(reader, count_fmt))
    return key, _read_value(reader, value_type, count_fmt)


def _read_value(reader: _Reader, value_type: int, count_fmt: str) -> Any:
    if value_type == _STRING:
        return reader.string(count_fmt)
    fmt = _SCALARS.get(value_type)
    if fmt is None:
        raise ToolkitError(f"unknown GGUF value type {value_type}")
    return reader.scalar(fmt)


def _skip_array(reader: _Reader, count_fmt: str) -> int:
    """Move past an array without keeping it; returns its length."""
    item_type = reader.scalar("<I")
    length = reader.scalar(count_fmt)
    if item_type in _SCALARS:
        reader.skip(length * struct.calcsize(_SCALARS[item_type]))
    elif item_type == _STRING:
        for _ in range(length):
            reader.skip(reader.scalar(count_fmt))
    elif item_type == _ARRAY:
        for _ in range(length):
            _skip_array(reader, count_fmt)
    else:
        raise ToolkitError(f"unknown GGUF array item type {item_type}")
    return length


class _ArrayLength(int):
    """Marks a value that was an array, kept only as its length."""


def _info_from(values: dict[str, Any]) -> GGUFInfo:
    architecture = values.get("general.architecture")
    if not isinstance(architecture, str):
        raise ToolkitError("GGUF file has no general.architecture")
    file_type = values.get("general.file_type")
    context = values.get(f"{architecture}.context_length")
    template = values.get("tokenizer.chat_template")
    parameters = {
        key: (int(value) if isinstance(value, _ArrayLength) else value)
        for key, value in values.items()
        if key != "tokenizer.chat_template"
    }
    return GGUFInfo(
        architecture=architecture,
        name=values.get("general.name") if isinstance(values.get("general.name"), str) else None,
        context_length=int(context) if isinstance(context, int) else None,
        file_type=FILE_TYPES.get(file_type) if isinstance(file_type, int) else None,
        chat_template=template if isinstance(template, str) else None,
        parameters=parameters,
    )


def system_role_supported(chat_template: str | None) -> bool:
    """Whether a chat template accepts a 'system' message and keeps it.

    Some templates (Gemma 2, Mistral's older ones) call ``raise_exception`` on a system role; some
    silently drop it. Either way the proxy must fold system text into the first user turn, so
    both count as unsupported. No template means the engine's fallback (ChatML) applies, which
    does take a system role.
    """
    if chat_template is None:
        return True
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    marker = "SYSTEM-ROLE-PROBE-7f3a"
    messages = [
        {"role": "system", "content": marker},
        {"role": "user", "content": "hello"},
    ]
    try:
        rendered = env.from_string(chat_template).render(
            messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
        )
    except Exception:
        return False
    return marker in rendered
