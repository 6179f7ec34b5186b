"""Checks before a byte moves: memory fit from the GGUF header, disk room and the play's quota.

The unit tests read the real Gemma GGUF's header; the end-to-end ones apply a playbook whose data
dir is a real tmpfs too small for the model, and a play whose quota is too small.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import GEMMA_SHA256
from toolkit.errors import ToolkitError
from toolkit.hosts.facts import Facts
from toolkit.models.gguf import read_gguf
from toolkit.models.store import ModelStore
from toolkit.preflight import GIB, check_disk, check_memory, kv_cache_bytes
from toolkit.site import ModelSpec


@pytest.fixture
def cached_gemma(gemma_gguf, tmp_path, monkeypatch):
    """The demo model in a workstation store of its own (TOOLKIT_CACHE_DIR)."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    ModelStore(tmp_path / "cache" / "models").adopt(gemma_gguf, GEMMA_SHA256)
    return gemma_gguf


def gemma(args: dict | None = None) -> ModelSpec:
    return ModelSpec("gemma", "llamacpp", {"path": "x"}, GEMMA_SHA256, args or {}, [], None, None)


def test_kv_cache_from_the_gemma_header(gemma_gguf):
    info = read_gguf(gemma_gguf)
    # 18 layers x 1 KV head x (256 + 256) x 2 bytes per token of context
    assert kv_cache_bytes(info, 4096) == 18 * 4096 * 1 * 512 * 2


def test_a_model_that_does_not_fit_is_refused_with_the_numbers(cached_gemma):
    small = Facts(mem_kb=700 * 1024)  # 700 MiB: 512 MiB reserve leaves less than the model
    with pytest.raises(ToolkitError) as caught:
        check_memory([gemma({"ctx_size": 4096})], small)
    message = str(caught.value)
    assert "do not fit in RAM" in message and "gemma 0.2 GiB weights + 0.1 GiB KV cache" in message
    check_memory([gemma({"ctx_size": 4096})], Facts(mem_kb=4 * 1024 * 1024))  # 4 GiB: fits


def test_the_trained_context_counts_when_ctx_size_is_unset(cached_gemma):
    facts = Facts(mem_kb=1228 * 1024)  # 1.2 GiB: the 4k context fits, the trained 32k does not
    check_memory([gemma({"ctx_size": 4096})], facts)
    with pytest.raises(ToolkitError, match="KV cache"):
        check_memory([gemma()], facts)


def test_offloaded_models_count_against_the_gpu(cached_gemma):
    facts = Facts(mem_kb=600 * 1024, gpus=["nvidia: NVIDIA A10, 24564 MiB"])
    check_memory([gemma({"ctx_size": 4096})], facts)  # on the GPU: RAM is not asked
    with pytest.raises(ToolkitError, match="RAM"):
        check_memory([gemma({"ctx_size": 4096, "n_gpu_layers": 0})], facts)


def test_disk_and_quota(cached_gemma):
    model = gemma()
    with pytest.raises(ToolkitError, match=r"not enough disk .* 0\.2 GiB to place"):
        check_disk([model], [model], Facts(disk_free_kb=100 * 1024, data_dir="/d"), None)
    check_disk([model], [model], Facts(disk_free_kb=10 * 1024 * 1024), None)
    with pytest.raises(ToolkitError, match="over its quota max_disk_gb: 0.1"):
        check_disk([], [model], Facts(disk_free_kb=10 * 1024 * 1024), 0.1)
    assert os.path.getsize(cached_gemma) > GIB * 0.1


def apply(tmp_path, gemma_gguf, data_dir, quota=None):
    play = {
        "hosts": "all",
        "runtimes": {"llamacpp": {"install": "pip"}},
        "models": [{"name": "gemma", "runtime": "llamacpp", "source": {"path": str(gemma_gguf)},
                    "sha256": GEMMA_SHA256, "args": {"ctx_size": 1024}}],
    }  # fmt: skip
    if quota is not None:
        play["max_disk_gb"] = quota
    (tmp_path / "site.yml").write_text(yaml.safe_dump([play]))
    inventory = {"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                                 "toolkit_data_dir": str(data_dir)}}}}  # fmt: skip
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    env = {**os.environ, "TOOLKIT_CACHE_DIR": str(tmp_path / "cache"),
           "TOOLKIT_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "apply", str(tmp_path / "site.yml"),
         "-i", str(tmp_path / "hosts.yml")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_data_dir_too_small_for_the_model_is_refused_before_the_transfer(
    tmp_path, gemma_gguf, small_tmpfs
):
    data = small_tmpfs / "toolkit"
    out = apply(tmp_path, gemma_gguf, data)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "not enough disk for the models: 0.2 GiB to place (gemma)" in out.stdout, out.stdout
    assert "nothing was transferred" in out.stdout
    left = [str(p) for p in small_tmpfs.rglob("*") if p.is_file()]
    assert not [p for p in left if ".gguf" in p], left


def test_a_quota_too_small_is_refused_before_the_transfer(tmp_path, gemma_gguf):
    data = tmp_path / "data"
    out = apply(tmp_path, gemma_gguf, data, quota=0.1)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "over its quota max_disk_gb: 0.1" in out.stdout, out.stdout
    assert not list(data.rglob("*.gguf*"))
