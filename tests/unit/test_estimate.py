"""Estimate terms, with the arithmetic beside each case."""

from __future__ import annotations

import pytest

from gpufleet.core.estimate import (
    GPU_OVERHEAD,
    HOST_OVERHEAD,
    compute_buffer_bytes,
    default_context_size,
    estimate_llama_cpp,
    kv_cache_bytes,
)
from gpufleet.core.schemas import ModelMetadata


def meta(**kw: int) -> ModelMetadata:
    base = dict(file_size=0, tensor_bytes=1000, n_params=0, n_layers=2, n_heads=4, n_kv_heads=4,
                head_dim_k=16, head_dim_v=16, embedding_length=64, context_length=512, vocab_size=394)
    base.update(kw)
    return ModelMetadata(format="gguf", architecture="llama", **base)


@pytest.mark.parametrize(
    ("m", "n_ctx", "expected"),
    [
        # n_ctx × layers × kv_heads × (dk + dv) × 2 bytes
        (meta(), 512, 512 * 2 * 4 * (16 + 16) * 2),  # = 262,144
        (meta(n_layers=32, n_kv_heads=8, head_dim_k=128, head_dim_v=128), 4096,
         4096 * 32 * 8 * 256 * 2),  # Llama-3-8B shape: 512 MiB at 4096 ctx
        (meta(n_kv_heads=1), 100, 100 * 2 * 1 * 32 * 2),  # MQA: 12,800
    ],
)
def test_kv_cache(m: ModelMetadata, n_ctx: int, expected: int) -> None:
    assert kv_cache_bytes(m, n_ctx) == expected


def test_compute_buffer() -> None:
    # 512 × (394 + 4 × 64) × 4 bytes = 1,331,200
    assert compute_buffer_bytes(meta()) == 512 * (394 + 256) * 4 == 1_331_200


@pytest.mark.parametrize(("ctx_train", "expected"), [(512, 512), (131072, 4096), (0, 4096)])
def test_default_context(ctx_train: int, expected: int) -> None:
    assert default_context_size(meta(context_length=ctx_train)) == expected


def test_estimate_totals() -> None:
    m = meta()
    e = estimate_llama_cpp(m)  # ctx = min(4096, 512) = 512
    model = 1000 + 262_144 + 1_331_200
    assert e.context_size == 512
    assert (e.weights, e.kv_cache, e.compute) == (1000, 262_144, 1_331_200)
    assert e.gpu_vram == model + GPU_OVERHEAD
    assert e.cpu_ram == model + HOST_OVERHEAD
    assert e.gpu_ram == HOST_OVERHEAD


def test_explicit_context_overrides_default() -> None:
    # 256 tokens: 256 × 2 × 4 × 32 × 2 = 131,072
    assert estimate_llama_cpp(meta(), context_size=256).kv_cache == 131_072
