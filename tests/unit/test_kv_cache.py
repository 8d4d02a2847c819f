"""The extended KV cache (LMCache): environment, connector config, matrix, and the RAM placement claims."""

from __future__ import annotations

import json

import pytest

from gpufleet.core.backends import kv_cache
from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.placement.request import EstimateCache, PlacementRequest
from gpufleet.core.schemas import DeploymentConfig, KvCacheSpec, ModelSource

GiB = 1 << 30
HOST_RAM = 2 * GiB  # the vLLM process itself (estimation.vllm.HOST_RAM)


@pytest.mark.parametrize(("spec", "ranks", "version", "expected"), [
    # 32 GiB on one rank, local only, current LMCache
    (KvCacheSpec(cpu_gib=32), 1, "0.5.6",
     {"LMCACHE_CHUNK_SIZE": "256", "LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "32"}),
    # 10 GiB over 4 tensor-parallel ranks: 10 / 4 = 2.5 GiB per LMCache engine, 10 GiB on the node
    (KvCacheSpec(cpu_gib=10, chunk_size=512), 4, "0.5.0",
     {"LMCACHE_CHUNK_SIZE": "512", "LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "2.5"}),
    # 1 GiB over 3 ranks: 0.333333 GiB each (LMCache parses float(); 6 decimals, trailing zeros dropped)
    (KvCacheSpec(cpu_gib=1), 3, "0.5.6",
     {"LMCACHE_CHUNK_SIZE": "256", "LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "0.333333"}),
    # a remote store adds its URL and the naive serde
    (KvCacheSpec(cpu_gib=8, remote_url="redis://kv:6379"), 1, "0.5.6",
     {"LMCACHE_CHUNK_SIZE": "256", "LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "8",
      "LMCACHE_REMOTE_URL": "redis://kv:6379", "LMCACHE_REMOTE_SERDE": "naive"}),
    # releases before 0.3 kept the v1 engine behind LMCACHE_USE_EXPERIMENTAL
    (KvCacheSpec(cpu_gib=8), 1, "0.2.1",
     {"LMCACHE_CHUNK_SIZE": "256", "LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "8",
      "LMCACHE_USE_EXPERIMENTAL": "True"}),
])
def test_lmcache_env(spec: KvCacheSpec, ranks: int, version: str, expected: dict[str, str]) -> None:
    assert kv_cache.lmcache_env(spec, version, ranks=ranks) == expected


def test_lmcache_env_refuses_no_ranks() -> None:
    with pytest.raises(ValueError, match="ranks must be at least 1"):
        kv_cache.lmcache_env(KvCacheSpec(cpu_gib=1), ranks=0)


def test_kv_transfer_config_is_compact_json() -> None:
    text = kv_cache.kv_transfer_config()
    assert text == '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'
    assert json.loads(text) == {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}


@pytest.mark.parametrize(("spec", "expected"), [
    (None, 0),
    (KvCacheSpec(cpu_gib=32), 34_359_738_368),   # 32 x 2^30
    (KvCacheSpec(cpu_gib=0.5), 536_870_912),     # 0.5 x 2^30
])
def test_ram_claim_bytes(spec: KvCacheSpec | None, expected: int) -> None:
    assert kv_cache.ram_claim_bytes(spec) == expected


@pytest.mark.parametrize(("engine", "kinds", "ok"), [
    ("vllm", ["cuda"], True),
    ("vllm", ["rocm", "cuda"], True),
    ("vllm", ["cuda", "cpu"], False),
    ("llama.cpp", ["cuda"], False),
    ("llama-box", ["cpu"], False),
    ("vox-box", ["cuda"], False),
])
def test_compatibility_matrix(engine: str, kinds: list[str], ok: bool) -> None:
    if ok:
        assert kv_cache.check_kv_cache(engine, kinds) is None
    else:
        with pytest.raises(ValueError, match=f"with {engine} on .* workers") as info:
            kv_cache.check_kv_cache(engine, kinds)
        assert "vllm: cuda yes, rocm yes, cpu no; llama.cpp: cuda no, rocm no, cpu no" in str(info.value)


def test_unknown_engine_or_kind() -> None:
    assert "not an engine" in (kv_cache.unsupported_reason("sglang", "cuda") or "")
    assert "unknown device kind" in (kv_cache.unsupported_reason("vllm", "tpu") or "")


# --- the RAM claim reaches the estimate and placement ---------------------------------------

META = ModelMetadata(format="safetensors", architecture="LlamaForCausalLM", file_size=int(14.99 * GiB),
                     tensor_bytes=int(14.99 * GiB), n_layers=32, n_heads=32, n_kv_heads=8, head_dim_k=128,
                     head_dim_v=128, context_length=16000, torch_dtype="bfloat16")


@pytest.mark.parametrize(("extra", "ram"), [
    (0, HOST_RAM),                     # no extended cache: the process's 2 GiB
    (32 * GiB, HOST_RAM + 32 * GiB),   # 2 + 32 = 34 GiB claimed on the worker
])
def test_estimate_host_ram_includes_the_extended_cache(extra: int, ram: int) -> None:
    e = estimate(META, EstimateOptions(backend="vllm", gpu_memory=(80 * GiB,), kv_cache_cpu_bytes=extra))
    assert e.known, e.reason
    assert e.ram == ram
    assert e.host.kv_cache == extra
    assert e.claims == (int(0.9 * 80 * GiB),)  # GPU claims are unchanged


def test_placement_request_claims_the_extended_cache_ram() -> None:
    cfg = DeploymentConfig(source=ModelSource(local_path="/m"), backend="vllm", kv_cache=KvCacheSpec(cpu_gib=32))
    request = PlacementRequest.from_config("chat", cfg, META)
    assert request.kv_cache_cpu_bytes == 32 * GiB
    assert EstimateCache(request).single(80 * GiB).ram == HOST_RAM + 32 * GiB
    plain = PlacementRequest.from_config("chat", cfg.model_copy(update={"kv_cache": None}), META)
    assert EstimateCache(plain).single(80 * GiB).ram == HOST_RAM
