"""llama.cpp estimate terms and device placement, with the arithmetic beside each case."""

from __future__ import annotations

import pytest

from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.core.estimation import llama_compute as compute
from gpufleet.core.estimation import llama_kv as kv
from gpufleet.core.estimation.cuda_overhead import GPU_OVERHEAD_QUANTIZED as GPU_OVERHEAD
from gpufleet.core.estimation.llama_cpp import HOST_BASE, HOST_GPU_RUNTIME, split_bounds
from gpufleet.core.estimation.llama_params import EstimateInputError, parse_llama_params
from gpufleet.core.metadata import ModelMetadata

MiB = 1 << 20
GiB = 1 << 30


def meta(**kw: object) -> ModelMetadata:
    """4 blocks of 1000 bytes, embedding 300, output 200, other 10: tensor bytes 4510."""
    base: dict[str, object] = dict(
        file_size=4510, tensor_bytes=4510, n_layers=4, n_heads=4, n_kv_heads=2, head_dim_k=16, head_dim_v=16,
        embedding_length=64, feed_forward_length=128, context_length=1024, vocab_size=100,
        layer_bytes=[1000] * 4, embedding_bytes=300, output_bytes=200, other_bytes=10,
    )
    base.update(kw)
    base.setdefault("format", "gguf")
    base.setdefault("architecture", "llama")
    return ModelMetadata(**base)  # type: ignore[arg-type]


def opts(*params: str, gpus: int = 0, **kw: object) -> EstimateOptions:
    return EstimateOptions(backend_params=params, gpu_memory=(80 * GiB,) * gpus, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize(("n_ctx", "n_seq", "unified", "expected"), [
    (2048, 1, False, (1, 2048)),  # one stream of 2048 (already a multiple of 256)
    (1000, 1, False, (1, 1024)),  # 1000 padded up to 4 x 256
    (2048, 3, False, (3, 768)),  # 2048 // 3 = 682 -> 768 per stream (llama.cpp logs 2304 cells)
    (2048, 4, True, (1, 2048)),  # --kv-unified: one shared stream
    (100, 1, False, (1, 256)),  # at least one pad unit
])
def test_stream_cells(n_ctx: int, n_seq: int, unified: bool, expected: tuple[int, int]) -> None:
    assert kv.stream_cells(n_ctx, n_seq, unified) == expected


@pytest.mark.parametrize(("type_name", "n", "expected"), [
    ("f16", 128, 256),  # 128 x 2 bytes
    ("f32", 128, 512),  # 128 x 4
    ("q8_0", 128, 136),  # 4 blocks of 32 x 34 bytes
    ("q4_0", 128, 72),  # 4 blocks x 18 bytes
    ("bf16", 64, 128),  # 64 x 2
])
def test_row_bytes(type_name: str, n: int, expected: int) -> None:
    assert kv.row_bytes(type_name, n) == expected


@pytest.mark.parametrize(("params", "expected"), [
    # 1024 cells x 4 layers x 2 heads x (16 + 16) x 2 bytes = 524,288
    ((), 1024 * 4 * 2 * 32 * 2),
    # q8_0 K and V: row of 32 elements = 1 block = 34 bytes; 1024 x 4 x (34 + 34) = 278,528
    (("-ctk=q8_0", "-ctv=q8_0"), 1024 * 4 * 68),
    # ctx 512 -> 512 cells: 512 x 4 x 2 x 32 x 2 = 262,144
    (("--ctx-size=512",), 512 * 4 * 128),
    # ctx 0 = the training context (1024 here)
    (("--ctx-size=0",), 1024 * 4 * 128),
])
def test_kv_cache_on_cpu(params: tuple[str, ...], expected: int) -> None:
    assert estimate(meta(), opts(*params)).host.kv_cache == expected


def test_sliding_window_layers_keep_a_window() -> None:
    # gemma2-style: layers 0 and 2 slide with window 128; n_ubatch = min(512, 4096) = 512.
    # SWA cells = min(4096, pad256(128 x 1 + 512)) = min(4096, 768) = 768.
    m = meta(context_length=8192, sliding_window=128, swa_layers=[True, False, True, False])
    row = 2 * 16 * 2  # 2 heads x 16 dims x 2 bytes, for K and for V each
    expected = 2 * 768 * 2 * row + 2 * 4096 * 2 * row  # 2 SWA layers + 2 full layers
    assert estimate(m, opts()).host.kv_cache == expected
    # --swa-full: every layer keeps the whole context: 4 x 4096 x 2 x 64
    assert estimate(m, opts("--swa-full")).host.kv_cache == 4 * 4096 * 2 * row


def test_mla_caches_one_latent_per_token() -> None:
    # DeepSeek-style: K = 512 + 64 = 576, V = 512 elements, f16: (576 + 512) x 2 = 2176 bytes per layer-token
    m = meta(kv_lora_rank=512, rope_head_dim=64, n_kv_heads=128, head_dim_k=192, head_dim_v=128)
    assert estimate(m, opts()).host.kv_cache == 1024 * 4 * 2176


def test_per_layer_kv_heads() -> None:
    # hybrid model: layers with 0 KV heads (recurrent) hold no KV: (2 + 0 + 2 + 0) x 1024 x 64 bytes
    m = meta(n_kv_heads_per_layer=[2, 0, 2, 0])
    e = estimate(m, opts())
    assert e.host.kv_cache == 2 * 1024 * 2 * 32 * 2
    assert any("RS buffer" in n for n in e.notes)  # the recurrent state is said to be missing


# ----------------------------------------------------------------------------- compute buffer

@pytest.mark.parametrize(("shape", "n_ubatch", "n_kv", "flash", "expected"), [
    # llama.cpp logged 7.52 MiB: n_embd 256, n_ff 512, 8 heads of 32, ctx 2048, flash on.
    # peak = max(attn 4x256 + 3x256 = 1792, ffn 3x512 + 5x256 = 2816) = 2816 floats/token
    # 512 x (2816 x 4 + 16) + mask 2048 x 512 x 2 + logits 365 x 4 = 7,868,416 bytes = 7.50 MiB
    (dict(embedding_length=256, feed_forward_length=512, n_heads=8, head_dim_k=32, vocab_size=365),
     512, 2048, True, 512 * (2816 * 4 + 16) + 2048 * 512 * 2 + 365 * 4),
    # logged 39.26 MiB: same model, flash off: attention = 1792 + 8 x 2048 scores = 18,176 floats
    # 512 x (18176 x 4 + 16) + mask 2048 x 512 x 4 + 1460 = 41,424,308 bytes = 39.51 MiB
    (dict(embedding_length=256, feed_forward_length=512, n_heads=8, head_dim_k=32, vocab_size=365),
     512, 2048, False, 512 * (18176 * 4 + 16) + 2048 * 512 * 4 + 365 * 4),
    # logged 36.02 MiB: n_embd 1024, n_ff 4096: ffn 3 x 4096 + 5 x 1024 = 17,408 floats
    (dict(embedding_length=1024, feed_forward_length=4096, n_heads=8, head_dim_k=128, vocab_size=365),
     512, 2048, True, 512 * (17408 * 4 + 16) + 2048 * 512 * 2 + 365 * 4),
])
def test_compute_buffer(shape: dict[str, int], n_ubatch: int, n_kv: int, flash: bool, expected: int) -> None:
    m = meta(**shape)
    assert compute.graph_bytes(m, n_ubatch, n_kv, flash, 1, True) == expected


def test_moe_feed_forward_width() -> None:
    # 8 experts of 256, 2 used + 1 shared: 3 x 256 x 3 + 8 router logits + 5 x 64 = 2632 floats
    m = meta(n_experts=8, n_experts_used=2, n_shared_experts=1, expert_feed_forward_length=256)
    assert compute.ffn_width(m) == 3 * 256 * 3 + 8 + 5 * 64


def test_micro_batch_is_clamped_to_batch_and_context() -> None:
    # ctx 256 < n_ubatch 512: n_batch = min(2048, 256) = 256, n_ubatch = 256
    # peak = max(4x64 + 3x64 = 448, 3x128 + 5x64 = 704) = 704; 256 x (704 x 4 + 16) + 256 x 256 x 2 + 400
    expected = 256 * (704 * 4 + 16) + 256 * 256 * 2 + 100 * 4
    assert estimate(meta(), opts("--ctx-size=256")).host.compute == expected


# ----------------------------------------------------------------------------- layer placement

@pytest.mark.parametrize(("n", "split", "expected"), [
    (5, (1.0, 1.0), [3, 5]),  # k/5 < 0.5 for k = 0, 1, 2 -> GPU 0 holds 3
    (4, (1.0, 1.0), [2, 4]),  # k = 2: 2/4 = 0.5 is not < 0.5 -> GPU 1
    (81, (1.0,) * 8, [11, 21, 31, 41, 51, 61, 71, 81]),  # 81 x 0.125 = 10.125 -> k = 0..10
    (10, (3.0, 1.0), [8, 10]),  # k/10 < 0.75 for k <= 7
    (3, (0.0, 1.0), [0, 3]),  # a zero share gets nothing
])
def test_split_bounds(n: int, split: tuple[float, ...], expected: list[int]) -> None:
    assert split_bounds(n, split) == expected


def test_cpu_only_holds_everything() -> None:
    e = estimate(meta(), opts())
    # weights: 4 x 1000 + 300 + 200 + 10 = 4510; overhead 8 MiB + 192 x 100
    assert (e.known, e.gpus, e.claims, e.total_layers, e.gpu_layers) == (True, (), (), 5, 0)
    assert e.host.weights == 4510
    assert e.host.overhead == HOST_BASE + 192 * 100
    assert e.host.output == 100 * 4  # logits of one sequence


def test_full_offload_one_gpu() -> None:
    e = estimate(meta(), opts(gpus=1))
    gpu, host = e.gpus[0], e.host
    assert (e.gpu_layers, gpu.layers, host.layers) == (5, 5, 0)  # 4 blocks + output
    assert gpu.weights == 4 * 1000 + 200  # blocks + output layer
    assert host.weights == 300 + 10  # the token embedding always stays on the CPU
    assert gpu.kv_cache == 1024 * 4 * 128 and host.kv_cache == 0
    assert gpu.overhead == GPU_OVERHEAD
    assert host.overhead == HOST_BASE + 192 * 100 + HOST_GPU_RUNTIME
    # host compute keeps only the graph inputs: 512 x (64 x 4 + 16) + mask 1024 x 512 x 2
    assert host.compute == 512 * (64 * 4 + 16) + 1024 * 512 * 2
    assert e.claims == (gpu.total,) and not e.offloaded_to_cpu


@pytest.mark.parametrize(("ngl", "gpu_blocks", "output_on_gpu"), [
    (0, 0, False),  # nothing offloaded
    (1, 0, True),  # llama.cpp offloads the output layer first
    (3, 2, True),  # blocks 2, 3 and the output
    (4, 3, True),
    (5, 4, True),  # everything
    (99, 4, True),  # clamped to n_layer + 1
])
def test_gpu_layers_count_the_output_layer(ngl: int, gpu_blocks: int, output_on_gpu: bool) -> None:
    e = estimate(meta(), opts(gpus=1, gpu_layers=ngl))
    gpu = e.gpus[0]
    assert gpu.weights == gpu_blocks * 1000 + (200 if output_on_gpu else 0)
    assert e.host.weights == (4 - gpu_blocks) * 1000 + (0 if output_on_gpu else 200) + 310
    assert gpu.kv_cache == gpu_blocks * 1024 * 128
    assert e.gpu_layers == min(ngl, 5)


def test_partial_offload_stages_a_cpu_layer_on_gpu0() -> None:
    # ngl 3: the CPU keeps blocks 0, 1; the largest (1000 bytes) is uploaded per op into GPU 0's compute
    full = estimate(meta(), opts(gpus=1, gpu_layers=5)).gpus[0].compute
    assert estimate(meta(), opts(gpus=1, gpu_layers=3)).gpus[0].compute == full + 1000


def test_tensor_split_over_two_gpus() -> None:
    # 5 llama.cpp layers, split 1:1 -> GPU 0: blocks 0-2 (k < 2.5), GPU 1: block 3 + output
    e = estimate(meta(), opts("--tensor-split=1,1", gpus=2))
    assert [g.layers for g in e.gpus] == [3, 2]
    assert [g.weights for g in e.gpus] == [3000, 1000 + 200]
    assert [g.kv_cache for g in e.gpus] == [3 * 1024 * 128, 1024 * 128]
    # EstimateOptions.tensor_split wins over the flag: 3:1 -> k/5 < 0.75 for k <= 3
    e = estimate(meta(), opts("--tensor-split=1,1", gpus=2, tensor_split=(3.0, 1.0)))
    assert [g.layers for g in e.gpus] == [4, 1]


def test_split_mode_none_uses_the_main_gpu() -> None:
    e = estimate(meta(), opts("--split-mode=none", "--main-gpu=1", gpus=2))
    assert [g.layers for g in e.gpus] == [0, 5]
    assert e.gpus[0].compute == 0  # an idle GPU only carries its overhead
    assert e.gpus[0].total == GPU_OVERHEAD


def test_no_kv_offload_keeps_kv_on_the_host() -> None:
    e = estimate(meta(), opts("--no-kv-offload", gpus=1))
    assert e.gpus[0].kv_cache == 0
    assert e.host.kv_cache == 1024 * 4 * 128


def test_tied_output_is_copied_to_the_gpu() -> None:
    # no output.weight: the output layer (norm, 20 bytes) plus a copy of the 300-byte embedding
    m = meta(tied_embeddings=True, output_bytes=20)
    assert estimate(m, opts(gpus=1)).gpus[0].weights == 4000 + 20 + 300
    assert estimate(m, opts()).host.weights == 4000 + 20 + 300 + 10  # on the CPU they share one copy


def test_cpu_repack_of_q4_0() -> None:
    # all tensors Q4_0: the CPU also keeps a repacked copy of blocks + output (4000 + 200)
    m = meta(weight_bytes_by_dtype={"Q4_0": 4510})
    assert estimate(m, opts()).host.weights == 4510 + 4200
    assert estimate(m, opts("--no-repack")).host.weights == 4510


def test_mmproj_goes_to_the_main_gpu() -> None:
    m = meta(mmproj_bytes=5000)
    assert estimate(m, opts(gpus=1)).gpus[0].weights == 4200 + 5000
    assert estimate(m, opts("--no-mmproj-offload", gpus=1)).host.weights == 310 + 5000


def test_parallel_sizes_output_and_kv_streams() -> None:
    # --parallel 4 at ctx 1024: 4 streams of pad256(256) = 1024 cells in all; logits 4 x 100 x 4
    e = estimate(meta(), opts("--parallel=4"))
    assert e.host.kv_cache == 1024 * 4 * 128
    assert e.host.output == 4 * 100 * 4


def test_default_context_is_what_gpufleet_launches() -> None:
    # gpufleet launches --ctx-size min(4096, training context)
    assert estimate(meta(context_length=131072), opts()).context_size == 4096
    assert estimate(meta(context_length=1024), opts()).context_size == 1024
    assert estimate(meta(context_length=131072), opts("-c 8192")).context_size == 8192


# ----------------------------------------------------------------------------- flags and unknowns

@pytest.mark.parametrize(("params", "field", "value"), [
    (("-c 512",), "ctx_size", 512),
    (("--flash-attn",), "flash_attn", "on"),
    (("-fa=off",), "flash_attn", "off"),
    (("-ngl=all",), "gpu_layers", 10**6),
    (("--tensor-split=3,1",), "tensor_split", (3.0, 1.0)),
    (("-ctk=q4_0",), "cache_k", "q4_0"),
    (("--rpc=h1:50052,h2:50052",), "rpc_servers", 2),
    (("-c=512", "-c=1024"), "ctx_size", 1024),  # last one wins, as in llama.cpp
])
def test_parse_params(params: tuple[str, ...], field: str, value: object) -> None:
    assert getattr(parse_llama_params(params), field) == value


@pytest.mark.parametrize(("params", "message"), [
    (("--ctx-size=lots",), "--ctx-size needs an integer"),
    (("--cache-type-k=q9",), "--cache-type-k must be one of"),
    (("--parallel=0",), "--parallel needs an integer >= 1"),
    (("--tensor-split=a,b",), "--tensor-split needs non-negative proportions"),
    (("--flash-attn=maybe",), "--flash-attn takes on, off or auto"),
])
def test_bad_params_say_what_is_wrong(params: tuple[str, ...], message: str) -> None:
    with pytest.raises(EstimateInputError, match=message):
        parse_llama_params(params)
    e = estimate(meta(), opts(*params))
    assert not e.known and e.reason is not None and message in e.reason


def test_unknown_is_never_zero() -> None:
    assert not estimate(None, opts()).known
    assert "could not be read" in (estimate(None, opts()).reason or "")
    e = estimate(meta(format="safetensors"), opts())
    assert not e.known and "runs GGUF files" in (e.reason or "")
    e = estimate(meta(), EstimateOptions(backend="tgi"))
    assert not e.known and "no estimator" in (e.reason or "")
    e = estimate(meta(n_layers=0, layer_bytes=[]), opts())
    assert not e.known and "block count" in (e.reason or "")


def test_missing_layer_sizes_are_spread_and_noted() -> None:
    # 4510 - 300 - 200 - 10 = 4000 over 4 blocks
    e = estimate(meta(layer_bytes=[]), opts(gpus=1, gpu_layers=3))
    assert e.gpus[0].weights == 2 * 1000 + 200
    assert any("spread evenly" in n for n in e.notes)


def test_fewer_gpu_layers_never_need_more_vram_below_full_offload() -> None:
    # placement bisects over 1..n_layer; within that range VRAM grows with every layer
    m = meta(layer_bytes=[1000, 3000, 2000, 1000])
    vram = [estimate(m, opts(gpus=1, gpu_layers=k)).vram[0] for k in range(1, 5)]
    assert vram == sorted(vram)


def test_row_split_cuts_matrices_and_keeps_kv_on_the_main_gpu() -> None:
    # all 5 layers offloaded: 4200 bytes of weights cut 3:1 -> 3150 and 1050; KV only on GPU 0
    e = estimate(meta(), opts("--split-mode=row", "--tensor-split=3,1", gpus=2))
    assert [g.weights for g in e.gpus] == [3150, 1050]
    assert [g.kv_cache for g in e.gpus] == [1024 * 4 * 128, 0]
    assert e.gpus[1].compute == 0 and any("row" in n for n in e.notes)


def test_encoder_only_models_have_no_kv_cache() -> None:
    # BERT-style: no KV; attention over the micro-batch: n_kv = n_ubatch = min(512, 2048, 1024) = 512,
    # so the mask is 512 x 512 x 2 bytes instead of 1024 x 512 x 2
    m = meta(architecture="bert", category="embedding")
    e = estimate(m, opts())
    assert e.host.kv_cache == 0
    peak = max(4 * 64 + 3 * 64, 3 * 128 + 5 * 64)  # 704 floats per token
    assert e.host.compute == 512 * (peak * 4 + 16) + 512 * 512 * 2 + 100 * 4
    assert e.host.output == 100 * 4 + 64 * 4 * 512  # logits + one embedding row per token


def test_mmproj_compute_is_said_to_be_missing() -> None:
    assert any("projector" in n for n in estimate(meta(mmproj_bytes=10), opts()).notes)
