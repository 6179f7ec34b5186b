"""Checks made before a byte moves: do a host's models fit its memory, and its disk?

Memory: each model needs its weights (the GGUF's size) plus its KV cache, estimated from the
GGUF header as layers x context x KV heads x (key + value length) x 2 bytes (llama.cpp's default
f16 cache). The context is the model's ``ctx_size`` (the total its slots share) or, when unset
or 0, the context it was trained for. Models offloaded to a GPU (``n_gpu_layers`` other than 0
on a host whose facts name a GPU with its memory) count against that GPU's memory instead.
A fixed reserve is left for the system and toolkit's own processes.

Disk: the models a host still lacks, plus a margin, against its free space; and every model file
of the play against ``max_disk_gb`` when the play sets a quota.

What is not known yet (a model not fetched to the workstation) is not counted: the check runs
again after the fetch, before the transfer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from toolkit.errors import ToolkitError
from toolkit.models.metadata import model_info

if TYPE_CHECKING:
    from toolkit.hosts.facts import Facts
    from toolkit.models.gguf import GGUFInfo
    from toolkit.site import ModelSpec

GIB = 1024**3
MEMORY_RESERVE = GIB // 2  # the system, the proxy, supervisord
DISK_MARGIN = GIB // 2  # logs, the virtualenv, a partial upload beside the file
_GPU_MIB = re.compile(r"(\d+)\s*MiB")


@dataclass
class ModelNeed:
    name: str
    weights: int  # bytes
    kv_cache: int  # bytes
    on_gpu: bool

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def kv_cache_bytes(info: GGUFInfo, context: int) -> int:
    arch, p = info.architecture, info.parameters
    layers = int(p.get(f"{arch}.block_count") or 0)
    heads = int(p.get(f"{arch}.attention.head_count") or 0)
    kv_heads = int(p.get(f"{arch}.attention.head_count_kv") or heads)
    embedding = int(p.get(f"{arch}.embedding_length") or 0)
    key = int(p.get(f"{arch}.attention.key_length") or (embedding // heads if heads else 0))
    value = int(p.get(f"{arch}.attention.value_length") or key)
    return layers * context * kv_heads * (key + value) * 2


def model_need(model: ModelSpec, size: int, info: GGUFInfo, gpu: bool) -> ModelNeed:
    context = model.args.get("ctx_size") or info.context_length or 0
    offload = gpu and model.args.get("n_gpu_layers", -1) != 0
    return ModelNeed(model.name, size, kv_cache_bytes(info, context), offload)


def gpu_memory(facts: Facts) -> int:
    """Bytes of the largest GPU the facts name with its memory (0 when none does)."""
    sizes = [int(m[1]) for gpu in facts.gpus for m in [_GPU_MIB.search(gpu)] if m]
    return max(sizes, default=0) * 1024**2


def _gib(count: int) -> str:
    return f"{count / GIB:.1f} GiB"


def check_memory(models: list[ModelSpec], facts: Facts) -> None:
    """ToolkitError with the numbers when the models cannot all be loaded on this host."""
    if facts.mem_kb <= 0:
        return  # the host did not say
    vram = gpu_memory(facts)
    needs = []
    for model in models:
        info = model_info(model.sha256)
        size = _size(model)
        if info is not None and size is not None:
            needs.append(model_need(model, size, info, vram > 0))
    for where, budget, chosen in (
        ("RAM", facts.mem_kb * 1024 - MEMORY_RESERVE, [n for n in needs if not n.on_gpu]),
        ("GPU memory", vram, [n for n in needs if n.on_gpu]),
    ):
        wanted = sum(n.total for n in chosen)
        if chosen and wanted > budget:
            detail = ", ".join(
                f"{n.name} {_gib(n.weights)} weights + {_gib(n.kv_cache)} KV cache" for n in chosen
            )
            raise ToolkitError(
                f"the models do not fit in {where}: they need {_gib(wanted)} ({detail}), the host "
                f"has {_gib(budget)} to give (after a {_gib(MEMORY_RESERVE)} reserve); "
                "lower ctx_size or parallel, pick a smaller quantization, or serve fewer models here"
            )


def check_disk(placing: list[ModelSpec], every: list[ModelSpec], facts: Facts,
               quota_gb: float | None) -> None:  # fmt: skip
    """ToolkitError with the numbers when the files to place do not fit the host's disk or the
    play's quota."""
    incoming = sum(_size(m) or 0 for m in placing)
    free = facts.disk_free_kb * 1024
    if incoming and facts.disk_free_kb > 0 and incoming + DISK_MARGIN > free:
        raise ToolkitError(
            f"not enough disk for the models: {_gib(incoming)} to place "
            f"({', '.join(m.name for m in placing)}) + {_gib(DISK_MARGIN)} margin, "
            f"{_gib(free)} free under {facts.data_dir}; nothing was transferred"
        )
    if quota_gb is not None:
        total = sum(_size(m) or 0 for m in every)
        if total > quota_gb * GIB:
            raise ToolkitError(
                f"the models need {_gib(total)} on this host, over its quota max_disk_gb: "
                f"{quota_gb:g}; nothing was transferred"
            )


def _size(model: ModelSpec) -> int | None:
    from toolkit.models.store import controller_store

    path = controller_store().blob_path(model.sha256) if model.sha256 else None
    return path.stat().st_size if path is not None and path.is_file() else None
