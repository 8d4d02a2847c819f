"""vLLM estimate against published startup-log figures, and its terms.

Published figures: llm-d/llm-d-benchmark, config_explorer/empirical-vllm-memory-results.md
(vLLM log lines "Model loading took X GiB", "Available KV cache memory: Y GiB" on one
H100 of 79.18 GiB, --gpu-memory-utilization 0.9 -> 71.26 GiB requested, max-model-len 16000).
Weights are given as published (the safetensors headers give the same bytes); the test
checks that requested - weights - activation - non-torch lands within 1.5 GiB of vLLM's
own "Available KV cache memory", and that a model that failed to start comes out negative.
"""

from __future__ import annotations

import pytest

from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.core.estimation.vllm import kv_bytes_per_token, parse_vllm_params
from gpufleet.core.metadata import ModelMetadata

GiB = 1 << 30
H100 = int(79.18 * GiB)


def model(arch: str, weights_gib: float, layers: int, kv_heads: int, head_dim: int, **kw: object) -> ModelMetadata:
    return ModelMetadata(format="safetensors", architecture=arch, file_size=int(weights_gib * GiB),
                         tensor_bytes=int(weights_gib * GiB), n_layers=layers, n_heads=kv_heads * 4,
                         n_kv_heads=kv_heads, head_dim_k=head_dim, head_dim_v=head_dim, context_length=40960,
                         torch_dtype="bfloat16", **kw)  # type: ignore[arg-type]


PUBLISHED = [
    # (model, tp, published available KV GiB), arithmetic: 0.9 x 79.18 = 71.26 GiB requested
    # Llama-3.1-8B: 71.26 - 14.99 weights - 4.8 (Llama profile) - 0.15 = 51.32 (log: 51.38)
    (model("LlamaForCausalLM", 14.99, 32, 8, 128), 1, 51.38),
    # Qwen3-0.6B: 71.26 - 1.12 - 5.6 (Qwen3 profile) - 0.15 = 64.39 (log: 64.45)
    (model("Qwen3ForCausalLM", 1.12, 28, 8, 128), 1, 64.45),
    # gpt-oss-20b (MoE): 71.26 - 13.47 - 8.0 (MoE) - 0.15 = 49.64 (log: 50.28)
    (model("GptOssForCausalLM", 13.47, 24, 8, 64, n_experts=32, n_experts_used=4), 1, 50.28),
    # Llama-3.3-70B-FP8, TP 2: 71.26 - 67.76 / 2 - 4.8 - 0.6 = 31.98 per GPU (log: 32.0)
    (model("LlamaForCausalLM", 67.76, 80, 8, 128), 2, 32.0),
    # Llama-3.3-70B-FP8, TP 1: 71.26 - 67.72 - 4.8 - 0.15 = -1.41: vLLM failed (log: -1.44)
    (model("LlamaForCausalLM", 67.72, 80, 8, 128), 1, -1.44),
]


@pytest.mark.parametrize(("meta", "tp", "published"), PUBLISHED, ids=lambda v: getattr(v, "architecture", v))
def test_available_kv_matches_published_logs(meta: ModelMetadata, tp: int, published: float) -> None:
    e = estimate(meta, EstimateOptions(backend="vllm", backend_params=("--max-model-len=16000",
                                                                       f"--tensor-parallel-size={tp}"),
                                       gpu_memory=(H100,) * tp))
    assert e.known, e.reason
    for available in e.kv_cache_available:
        assert abs(available / GiB - published) <= 1.5, (available / GiB, published)
    assert (min(e.kv_cache_available) < 0) == (published < 0)


def test_claim_is_utilization_times_card_and_need_is_reported() -> None:
    m = model("LlamaForCausalLM", 14.99, 32, 8, 128)
    e = estimate(m, EstimateOptions(backend="vllm", backend_params=("--max-model-len=16000",),
                                    gpu_memory=(80 * GiB,)))
    gpu = e.gpus[0]
    # KV per token: 32 layers x 8 heads x (128 + 128) x 2 bytes = 131,072; x 16000 tokens = 1.95 GiB
    assert gpu.kv_cache == 16000 * 32 * 8 * 256 * 2
    assert gpu.weights == int(14.99 * GiB)
    assert e.claims == (int(0.9 * 80 * GiB),)
    assert gpu.total < e.claims[0]
    e = estimate(m, EstimateOptions(backend="vllm", backend_params=("--gpu-memory-utilization=0.5",),
                                    gpu_memory=(80 * GiB,)))
    assert e.claims == (40 * GiB,)


def test_embedding_models_claim_their_need() -> None:
    m = model("BertModel", 0.6, 24, 16, 64, category="embedding")
    e = estimate(m, EstimateOptions(backend="vllm", gpu_memory=(80 * GiB,)))
    assert e.claims == (e.gpus[0].total,)


@pytest.mark.parametrize(("params", "kw", "expected"), [
    # bf16: 32 x 8 x 256 x 2 = 131,072 bytes per token
    ((), {}, 32 * 8 * 256 * 2),
    # fp8 KV: 1 byte per element
    (("--kv-cache-dtype=fp8",), {}, 32 * 8 * 256),
    # TP 4: 8 / 4 = 2 heads per GPU
    (("-tp=4",), {}, 32 * 2 * 256 * 2),
    # TP 16 > 8 KV heads: replicated, 1 per GPU
    (("-tp=16",), {}, 32 * 1 * 256 * 2),
    # PP 2: 16 layers per stage
    (("-pp=2",), {}, 16 * 8 * 256 * 2),
    # MLA (DeepSeek-V3: 61 layers, latent 512 + rope 64): 61 x 576 x 2 = 70,272
    ((), {"n_layers": 61, "kv_lora_rank": 512, "rope_head_dim": 64}, 61 * 576 * 2),
])
def test_kv_per_token(params: tuple[str, ...], kw: dict[str, int], expected: int) -> None:
    m = model("LlamaForCausalLM", 14.99, 32, 8, 128).model_copy(update=kw)
    assert kv_bytes_per_token(m, parse_vllm_params(params)) == expected


@pytest.mark.parametrize(("params", "reason"), [
    (("--gpu-memory-utilization=1.5",), "fraction in (0, 1]"),
    (("--max-model-len=long",), "--max-model-len needs a number"),
    (("--kv-cache-dtype=fp3",), "--kv-cache-dtype 'fp3'"),
])
def test_bad_vllm_params_are_unknown_with_reason(params: tuple[str, ...], reason: str) -> None:
    e = estimate(model("LlamaForCausalLM", 1, 2, 1, 64), EstimateOptions(backend="vllm", backend_params=params))
    assert not e.known and reason in (e.reason or "")


def test_gpu_count_must_match_parallelism() -> None:
    e = estimate(model("LlamaForCausalLM", 1, 2, 1, 64),
                 EstimateOptions(backend="vllm", backend_params=("-tp=2",), gpu_memory=(GiB,)))
    assert not e.known and "--tensor-parallel-size" in (e.reason or "")


def test_tensor_parallel_follows_the_placed_gpus_unless_the_user_sets_it() -> None:
    """gpufleet launches vLLM with --tensor-parallel-size = GPUs placed on, so the estimate
    must assume it too: 2 GPUs without a user TP → TP 2 (weights halved per GPU), not unknown."""
    from gpufleet.core.estimation.vllm import VllmConfig, with_tensor_parallel

    assert with_tensor_parallel(VllmConfig(), 2).tp == 2        # 2 GPUs / pp 1
    assert with_tensor_parallel(VllmConfig(pp=2), 4).tp == 2    # 4 GPUs / pp 2
    assert with_tensor_parallel(VllmConfig(), 0).tp == 1        # no GPUs given (summary, CLI)
    assert with_tensor_parallel(VllmConfig(tp=4), 2).tp == 4    # the user's wins (and is checked elsewhere)
