"""The stored summary, the audio heuristic, and parameter checks, with arithmetic beside each case."""

from __future__ import annotations

import pytest

from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.core.estimation.summary import ResourceEstimate, check_params, summarize
from gpufleet.core.metadata import ModelMetadata

MiB = 1 << 20
GiB = 1 << 30


def gguf(**kw: object) -> ModelMetadata:
    base: dict[str, object] = dict(
        format="gguf", architecture="llama", file_size=4510, tensor_bytes=4510, n_layers=4, n_heads=4,
        n_kv_heads=2, head_dim_k=16, head_dim_v=16, embedding_length=64, feed_forward_length=128,
        context_length=1024, vocab_size=100, layer_bytes=[1000] * 4, embedding_bytes=300, output_bytes=200,
        other_bytes=10,
    )
    base.update(kw)
    return ModelMetadata(**base)  # type: ignore[arg-type]


def test_summary_of_llama_cpp_has_both_configurations() -> None:
    s = summarize(gguf(), "llama.cpp", ["--ctx-size=512"])
    cpu = estimate(gguf(), EstimateOptions(backend_params=("--ctx-size=512",)))
    assert s.known and s.backend == "llama.cpp" and s.context_size == 512 and s.total_layers == 5
    assert s.cpu_ram == cpu.ram
    assert s.weights == 4510  # every tensor, once
    assert s.kv_cache == 512 * 4 * 2 * 32 * 2  # 512 cells x 4 layers x 2 heads x 32 dims x 2 bytes
    assert [d.device for d in s.devices] == ["cpu", "gpu:0"]
    gpu = s.devices[1]
    assert s.gpu_vram == gpu.total == gpu.weights + gpu.kv_cache + gpu.compute + gpu.output + gpu.overhead
    assert gpu.weights == 4200 and s.devices[0].weights == 310  # embedding stays on the host
    assert s.gpu_ram == s.devices[0].total
    assert ResourceEstimate.model_validate(s.model_dump(mode="json")) == s  # stored as JSON and back


def test_summary_unknowns_carry_the_reason() -> None:
    assert summarize(None, "llama.cpp").reason == "model metadata could not be read on the server"
    s = summarize(gguf(), "llama.cpp", ["--ctx-size=big"])
    assert not s.known and "--ctx-size needs an integer" in (s.reason or "")
    assert ResourceEstimate.unknown("x").known is False


def test_summary_of_vllm_reports_the_need_and_the_fraction() -> None:
    m = gguf(format="safetensors", architecture="LlamaForCausalLM", tensor_bytes=15 * GiB, torch_dtype="bfloat16")
    s = summarize(m, "vllm", ["--max-model-len=8192"])
    # need = 15 GiB weights + 4.8 GiB activation + 0.15 GiB non-torch + 8192 x 4 x 2 x 32 x 2 bytes of KV
    expected = 15 * GiB + int(4.8 * GiB) + int(0.15 * GiB) + 8192 * 4 * 2 * 32 * 2
    assert s.known and s.gpu_required and s.cpu_ram == 0
    assert s.gpu_vram == expected
    assert s.gpu_memory_utilization == 0.9


def test_check_params() -> None:
    check_params("llama.cpp", ["--ctx-size=1024", "--flash-attn=on"])
    with pytest.raises(ValueError, match="--cache-type-v must be one of"):
        check_params("llama.cpp", ["--cache-type-v=q2"])
    with pytest.raises(ValueError, match="--gpu-memory-utilization"):
        check_params("vllm", ["--gpu-memory-utilization=2"])


@pytest.mark.parametrize(("category", "gpus", "expected"), [
    # speech-to-text: 1 GiB x 1.2 + 512 MiB = 1740.8 MiB
    ("speech-to-text", 1, GiB + int(GiB * 0.2) + 512 * MiB),
    # text-to-speech: 1 GiB x 3 + 512 MiB
    ("text-to-speech", 1, GiB + 2 * GiB + 512 * MiB),
    # on the CPU the same total is RAM
    ("speech-to-text", 0, GiB + int(GiB * 0.2) + 512 * MiB),
])
def test_audio_heuristic(category: str, gpus: int, expected: int) -> None:
    m = ModelMetadata(format="safetensors", architecture="whisper", category=category, file_size=GiB,
                      tensor_bytes=GiB)  # type: ignore[arg-type]
    e = estimate(m, EstimateOptions(backend="vox-box", gpu_memory=(24 * GiB,) * gpus))
    assert e.known and e.notes
    assert (e.claims[0] if gpus else e.ram) == expected


def test_audio_backend_refuses_text_models() -> None:
    m = ModelMetadata(format="safetensors", architecture="llama", file_size=GiB, tensor_bytes=GiB)
    assert not estimate(m, EstimateOptions(backend="vox-box")).known
