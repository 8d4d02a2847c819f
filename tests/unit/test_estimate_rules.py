"""llama.cpp b11434's memory rules as gpufleet implements them, with the arithmetic beside each
case (the same rules are checked against the real llama-server in
tests/integration/test_estimate_architectures.py; these run without it)."""

from __future__ import annotations

import pytest

from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.core.estimation import llama_kv as kv
from gpufleet.core.gguf import TensorInfo
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.model_metadata import repack_bytes, repacked

MiB = 1 << 20
TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8, "Q2_K": 10, "Q4_K": 12, "Q6_K": 14, "IQ4_NL": 20, "MXFP4": 39}


@pytest.mark.parametrize(("n_ctx", "n_seq", "unified", "expected"), [
    (4097, 2, False, (2, 2304)),  # pad(4097) = 4352, / 2 = 2176 -> 2304 (not pad(4097 // 2) = 2048)
    (2048, 3, False, (3, 768)),  # 2048 / 3 = 682 -> 768
    (3000, 3, True, (1, 3072)),  # one stream of pad(3000)
])
def test_context_is_padded_before_the_stream_split(n_ctx: int, n_seq: int, unified: bool,
                                                   expected: tuple[int, int]) -> None:
    assert kv.stream_cells(n_ctx, n_seq, unified) == expected


def meta(**kw: object) -> ModelMetadata:
    """4 blocks, 2 KV heads of 16 (f16 K+V: 2 x 32 x 2 = 128 B per cell per layer), training ctx 2048."""
    base: dict[str, object] = dict(
        format="gguf", architecture="llama", file_size=4510, tensor_bytes=4510, n_layers=4, n_heads=4,
        n_kv_heads=2, head_dim_k=16, head_dim_v=16, embedding_length=64, feed_forward_length=128,
        context_length=2048, vocab_size=100, layer_bytes=[1000] * 4, embedding_bytes=300, output_bytes=200)
    base.update(kw)
    return ModelMetadata(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("params", "cells"), [
    (("--ctx-size=0", "--parallel=4"), 4 * 2048),  # fit: every stream gets the training context
    (("--ctx-size=0", "--parallel=4", "--kv-unified"), 2048),  # one unified stream of it
    (("--ctx-size=0",), 2048),
])
def test_ctx_size_0_gives_every_stream_the_training_context(params: tuple[str, ...], cells: int) -> None:
    e = estimate(meta(), EstimateOptions(backend_params=params))
    assert e.host.kv_cache == 4 * cells * 128
    assert e.context_size == cells


def test_sliding_window_models_keep_a_second_mask() -> None:
    """ctx 4096, ubatch 512, flash attention (f16 mask): full layers' mask 4096 x 512 x 2 B = 4 MiB;
    window 256 -> pad(256 + 512) = 768 cells: a second mask of 768 x 512 x 2 B = 0.75 MiB."""
    plain = meta(context_length=8192)
    swa = meta(context_length=8192, sliding_window=256, swa_layers=[True, False, True, False])
    a = estimate(plain, EstimateOptions(backend_params=("--ctx-size=4096",))).host
    b = estimate(swa, EstimateOptions(backend_params=("--ctx-size=4096",))).host
    assert b.compute - a.compute == 768 * 512 * 2
    assert b.kv_cache == 2 * 4096 * 128 + 2 * 768 * 128


def t(name: str, shape: tuple[int, ...], type_name: str) -> TensorInfo:
    n = 1
    for d in shape:
        n *= d
    return TensorInfo(name, shape, TYPES[type_name], 0, n, n)  # n_bytes = elements: easy sums


@pytest.mark.parametrize(("tensor", "expected"), [
    (t("blk.0.ffn_gate.weight", (512, 1408), "Q4_0"), True),  # 1408 rows = 176 x 8
    (t("blk.0.ffn_gate.weight", (512, 1412), "Q4_0"), False),  # 1412 % 8 = 4: no x86 kernel
    (t("blk.0.attn_q.weight", (512, 512), "Q4_K"), True),
    (t("blk.0.attn_q.weight", (512, 512), "IQ4_NL"), True),
    (t("blk.0.ffn_gate_exps.weight", (512, 256, 16), "MXFP4"), True),  # 3-D experts: MUL_MAT_ID
    (t("blk.0.ffn_down.weight", (1408, 512), "Q6_K"), False),  # Q6_K: ARM only
    (t("blk.0.ffn_down.weight", (1408, 512), "Q8_0"), False),  # Q8_0: ARM only
    (t("blk.0.attn_norm.weight", (512,), "F32"), False),
    (t("blk.0.ffn_up.weight", (512, 1408), "F16"), False),
])
def test_cpu_repack_is_decided_per_tensor(tensor: TensorInfo, expected: bool) -> None:
    assert repacked(tensor) is expected


def test_repack_bytes_by_block_and_the_tied_output_copy() -> None:
    tensors = (t("token_embd.weight", (64, 1000), "Q4_0"), t("blk.0.attn_q.weight", (64, 64), "Q4_0"),
               t("blk.0.ffn_down.weight", (128, 64), "Q6_K"), t("blk.1.attn_q.weight", (64, 64), "Q4_0"))
    # tied: the embedding is read by GET_ROWS (never repacked), but its output duplicate is: 64 000
    assert repack_bytes(tensors, 2, tied=True) == ([4096, 4096], 64_000)
    assert repack_bytes(tensors, 2, tied=False) == ([4096, 4096], 0)


def test_host_weights_count_only_the_cpu_layers_repack() -> None:
    """Per block 1000 bytes, of which 600 repacked; output 200 (repacked 150). CPU only: 4 x 1000 + 300 +
    200 + 4 x 600 + 150; with 3 of 5 layers on a GPU (blocks 2, 3 and the output), the CPU keeps blocks
    0, 1: 2 x 1000 + 300 + 2 x 600."""
    m = meta(repack_layer_bytes=[600] * 4, repack_output_bytes=150)
    assert estimate(m, EstimateOptions()).host.weights == 4000 + 300 + 200 + 2400 + 150
    e = estimate(m, EstimateOptions(gpu_memory=(80 << 30,), gpu_layers=3))
    assert e.host.weights == 2000 + 300 + 1200
    assert estimate(m, EstimateOptions(backend_params=("--no-repack",))).host.weights == 4000 + 300 + 200
