"""Checks made before a byte moves: do a host's models fit its memory, and its disk?

Memory: each model needs its weights (the GGUF's size) plus its KV cache, estimated from the
GGUF header as layers x context x KV heads x (key + value length) x 2 bytes (llama.cpp's default
f16 cache). The context is the model's ``ctx_size`` (the total its slots share) or, when unset
or 0, the context it was trained for. Models offloaded to a GPU (``n_gpu_layers`` other than 0
on a host whose facts name a GPU with its memory) count against that GPU's memory instead.
A fixed reserve is left for the system and toolkit's own processes.

``max_memory_gb`` in the play caps the RAM its models may take on each host (a host shared
with other work). The same numbers decide how a model's engine is switched (toolkit/switch.py):
old and new side by side when both fit, else one after the other.

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


def memory_needs(models: list[ModelSpec], facts: Facts) -> tuple[list[ModelNeed], int]:
    """What each model needs (those whose GGUF is known yet), and the GPU memory there is."""
    vram = gpu_memory(facts)
    needs = []
    for model in models:
        info = model_info(model.sha256)
        size = _size(model)
        if info is not None and size is not None:
            needs.append(model_need(model, size, info, vram > 0))
    return needs, vram


def budgets(facts: Facts, vram: int, quota_gb: float | None = None) -> dict[str, int]:
    """Bytes the models may take, in RAM (less the reserve, and within the play's
    ``max_memory_gb``) and in GPU memory."""
    ram = facts.mem_kb * 1024 - MEMORY_RESERVE
    if quota_gb is not None:
        ram = min(ram, int(quota_gb * GIB))
    return {"RAM": ram, "GPU memory": vram}


def check_memory(models: list[ModelSpec], facts: Facts, quota_gb: float | None = None) -> None:
    """ToolkitError with the numbers when the models cannot all be loaded on this host."""
    if facts.mem_kb <= 0:
        return  # the host did not say
    needs, vram = memory_needs(models, facts)
    for where, budget in budgets(facts, vram, quota_gb).items():
        chosen = [n for n in needs if n.on_gpu == (where != "RAM")]
        wanted = sum(n.total for n in chosen)
        if chosen and wanted > budget:
            detail = ", ".join(
                f"{n.name} {_gib(n.weights)} weights + {_gib(n.kv_cache)} KV cache" for n in chosen
            )
            limit = (
                f" (max_memory_gb: {quota_gb:g})"
                if quota_gb is not None and where == "RAM"
                else f" (after a {_gib(MEMORY_RESERVE)} reserve)"
                if where == "RAM"
                else ""
            )
            raise ToolkitError(
                f"the models do not fit in {where}: they need {_gib(wanted)} ({detail}), the host "
                f"has {_gib(budget)} to give{limit}; "
                "lower ctx_size or parallel, pick a smaller quantization, or serve fewer models here"
            )


def fits_twice(needs: list[ModelNeed], switching: set[str], budget: dict[str, int]) -> bool:
    """Can the engines of ``switching`` run twice (the old one draining while the new one
    loads) beside every other model? ``needs`` holds every model of the host; a switching model
    whose need is not known (its GGUF not read) is never assumed to fit."""
    known = {n.name for n in needs}
    if not switching <= known:
        return False
    for where, room in budget.items():
        chosen = [n for n in needs if n.on_gpu == (where != "RAM")]
        wanted = sum(n.total * (2 if n.name in switching else 1) for n in chosen)
        if chosen and wanted > room:
            return False
    return True


def switch_fits(
    models: list[ModelSpec], switching: set[str], facts: Facts, quota_gb: float | None
) -> bool:
    """``fits_twice`` from the GGUF headers and the facts (a host that does not say its RAM:
    no)."""
    if facts.mem_kb <= 0:
        return False
    needs, vram = memory_needs(models, facts)
    return fits_twice(needs, switching, budgets(facts, vram, quota_gb))


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
