"""Engine × model × placement combinations gpufleet refuses, one message each."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.placement_spec import PlacementSpec
from gpufleet.core.schemas import DeploymentConfig, KvCacheSpec, ModelSource
from gpufleet.core.validation_rules import (
    InvalidCombination,
    capability_problems,
    check_engine_combination,
    kv_cache_device_ok,
    vllm_tensor_parallel,
)

GiB = 1 << 30
LLAMA = ModelMetadata(format="safetensors", architecture="LlamaForCausalLM", file_size=15 * GiB,
                      tensor_bytes=15 * GiB, n_layers=32, n_heads=32, n_kv_heads=8, head_dim_k=128, head_dim_v=128)
QWEN7B = LLAMA.model_copy(update={"architecture": "Qwen2ForCausalLM", "n_heads": 28, "n_kv_heads": 4})
GGUF = ModelMetadata(format="gguf", architecture="llama", file_size=4 * GiB, tensor_bytes=4 * GiB)
WHISPER = ModelMetadata(format="safetensors", architecture="WhisperForConditionalGeneration",
                        category="speech-to-text", file_size=GiB, tensor_bytes=GiB)


def unchecked(backend: str, **kw: object) -> DeploymentConfig:
    """A configuration the schema would refuse, built without its validator (as stored data may be)."""
    placement = PlacementSpec(**kw.pop("placement", {}))  # type: ignore[arg-type]
    return DeploymentConfig.model_construct(source=ModelSource(local_path="/m"), backend=backend,
                                            placement=placement, backend_params=kw.pop("params", []),
                                            env={}, category=None, kv_cache=kw.pop("kv_cache", None),
                                            backend_version=None, image=None)


def problems(config: DeploymentConfig, meta: ModelMetadata | None) -> list[str]:
    with pytest.raises(InvalidCombination) as info:
        check_engine_combination(config, meta)
    assert isinstance(info.value, ValueError)
    return info.value.problems


@pytest.mark.parametrize(("config", "meta", "expected"), [
    # CPU offloading: llama.cpp's partial offload; vLLM and vox-box run on GPUs only
    (unchecked("vllm", placement={"cpu_offloading": True}), LLAMA,
     ["--cpu-offloading is for llama.cpp and llama-box; vllm runs on GPUs only"]),
    (unchecked("vox-box", placement={"cpu_offloading": True}), WHISPER,
     ["--cpu-offloading is for llama.cpp and llama-box; vox-box runs on GPUs only"]),
    # spanning workers: llama.cpp RPC servers only
    (unchecked("vox-box", placement={"distributed": True}), WHISPER,
     ["--distributed is supported for llama.cpp and llama-box (llama.cpp RPC servers), not vox-box"]),
    # the extended KV cache on llama.cpp
    (unchecked("llama.cpp", kv_cache=KvCacheSpec(cpu_gib=8)), GGUF,
     ["the extended KV cache (--kv-cache-cpu-gib) is for vllm on CUDA or ROCm workers, not llama.cpp; "
      "see docs/engines.md for the compatibility matrix"]),
])
def test_capability_rules(config: DeploymentConfig, meta: ModelMetadata, expected: list[str]) -> None:
    assert problems(config, meta) == expected


@pytest.mark.parametrize(("backend", "kw"), [
    ("vllm", {"placement": PlacementSpec(cpu_offloading=True)}),
    ("vox-box", {"placement": PlacementSpec(distributed=True)}),
    ("llama.cpp", {"kv_cache": KvCacheSpec(cpu_gib=8)}),
])
def test_schema_refuses_with_the_same_message(backend: str, kw: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as info:
        DeploymentConfig(source=ModelSource(local_path="/m"), backend=backend, **kw)  # type: ignore[arg-type]
    spec = kw.get("placement", PlacementSpec())
    assert isinstance(spec, PlacementSpec)
    [message] = capability_problems(backend, cpu_offloading=spec.cpu_offloading, distributed=spec.distributed,
                                    kv_cache_on="kv_cache" in kw)
    assert message in str(info.value)


def test_gguf_file_on_vllm() -> None:
    [message] = problems(unchecked("vllm"), GGUF)
    assert message.startswith("vllm cannot serve GGUF files; use llama.cpp or llama-box")
    assert "GGUF loader is experimental" in message
    assert "gpufleet runs vLLM on safetensors checkpoints only" in message


def test_safetensors_on_llama_cpp_and_text_on_vox_box() -> None:
    assert problems(unchecked("llama.cpp"), LLAMA) == [
        "llama.cpp needs a GGUF file; deploy a GGUF variant or use vllm or vox-box"]
    assert problems(unchecked("vox-box"), LLAMA) == [
        "vox-box serves speech-to-text, text-to-speech models, not llm"]


@pytest.mark.parametrize(("params", "placement", "meta", "expected"), [
    # Qwen2.5-7B has 28 heads: 28 / 3 is not whole
    (["--tensor-parallel-size=3"], {}, QWEN7B, ["3 does not divide 28"]),
    (["-tp=3"], {}, QWEN7B, ["3 does not divide 28"]),
    # --gpus-per-replica is the tensor-parallel size of a vLLM replica
    ([], {"gpus_per_replica": 3}, QWEN7B, ["3 does not divide 28"]),
    # 6 GPUs in 2 pipeline stages: TP 3, which does not divide 28
    (["--pipeline-parallel-size=2"], {"gpus_per_replica": 6}, QWEN7B, ["3 does not divide 28"]),
    # 28 heads / 7 = 4, but 7 is neither a divisor nor a multiple of the 4 KV heads
    (["--tensor-parallel-size=7"], {}, QWEN7B, ["neither divides 4 nor is a multiple of it"]),
    # both given and different: two sizes, each checked, and the disagreement
    (["--tensor-parallel-size=4"], {"gpus_per_replica": 8}, LLAMA, ["disagrees with --gpus-per-replica 8"]),
])
def test_vllm_tensor_parallel_rules(params: list[str], placement: dict[str, object], meta: ModelMetadata,
                                    expected: list[str]) -> None:
    found = problems(unchecked("vllm", params=params, placement=placement), meta)
    assert len(found) == len(expected), found
    for message, part in zip(found, expected):
        assert part in message


@pytest.mark.parametrize(("params", "gpus", "sizes"), [
    ([], None, []),
    (["--tensor-parallel-size=4"], None, [4]),
    (["--tensor-parallel-size=4"], 4, [4]),            # the same size, once
    ([], 4, [4]),
    (["-pp=2"], 4, [2]),                               # 4 GPUs / 2 stages
    (["-pp=3"], 4, []),                                # 4 GPUs do not split into 3 stages: placement says so
    (["--tensor-parallel-size"], None, []),            # no value: the parameter check reports it
])
def test_tensor_parallel_sizes_asked(params: list[str], gpus: int | None, sizes: list[int]) -> None:
    assert vllm_tensor_parallel(unchecked("vllm", params=params, placement={"gpus_per_replica": gpus})) == sizes


def test_every_problem_is_reported_at_once() -> None:
    config = unchecked("vllm", params=["--tensor-parallel-size=3"], placement={"cpu_offloading": True})
    found = problems(config, GGUF.model_copy(update={"n_heads": 32}))
    assert [m.split(" ")[0] for m in found] == ["--cpu-offloading", "vllm", "vLLM"]
    assert str(InvalidCombination(found)) == "; ".join(found)


@pytest.mark.parametrize(("config", "meta"), [
    (DeploymentConfig(source=ModelSource(local_path="/m"), backend="vllm",
                      placement=PlacementSpec(gpus_per_replica=4), kv_cache=KvCacheSpec(cpu_gib=16)), LLAMA),
    (DeploymentConfig(source=ModelSource(local_path="/m"), backend="vllm", backend_params=["-tp=2"]), QWEN7B),
    (DeploymentConfig(source=ModelSource(local_path="/m"), backend="llama.cpp",
                      placement=PlacementSpec(cpu_offloading=True, distributed=True)), GGUF),
    (DeploymentConfig(source=ModelSource(local_path="/m"), backend="vox-box"), WHISPER),
    (DeploymentConfig(source=ModelSource(local_path="/m"), backend="vllm", backend_params=["-tp=3"]), None),
])
def test_valid_combinations_pass(config: DeploymentConfig, meta: ModelMetadata | None) -> None:
    assert check_engine_combination(config, meta) is None


@pytest.mark.parametrize(("kind", "ok"), [("cuda", True), ("rocm", True), ("cpu", False)])
def test_kv_cache_device_ok(kind: str, ok: bool) -> None:
    why = kv_cache_device_ok(kind)
    assert (why is None) == ok
    if not ok:
        assert why is not None and why.startswith("the extended KV cache (LMCache) does not run with vllm on cpu")
