"""The llama.cpp estimate on a CUDA GPU against what was measured on an H200.

The measurements (``/work/shared/notes/gpu-h200.md``, llama.cpp b11434 with CUDA 13.0,
driver 580) give, per case, llama.cpp's logged CUDA0 buffers and ``nvidia-smi``'s
per-process memory after a 1,501-token prompt, and the process RSS. The models were
synthetic llama GGUFs; their shapes follow from the logged buffers:

- 16 blocks, n_embd 2048, n_ff 8192, 512-wide K and V (4 KV heads of 128), 32,000
  tokens: per block 2 x 2048^2 + 2 x 2048 x 512 + 3 x 2048 x 8192 = 60,817,408
  weights; x 16 + output 2048 x 32,000 = 1,038,614,528 x 2 B = 1981.0 MiB F16
  (logged 1981), x 34/32 B = 1052.4 MiB Q8_0 (logged 1053); KV at 4096 cells:
  16 x 4096 x 2 x 512 x 2 B = 128 MiB (logged 128).
- 28 blocks, n_embd 3072, n_ff 8192, 1024-wide K and V, 128,256 tokens, tied output
  (Llama-3.2-3B's shape): 28 x 100,663,296 + a GPU copy of the 3072 x 128,256
  embedding = 3,212,546,048 x 2 B = 6127.5 MiB (logged 6128); KV at 8192: 28 x 8192 x
  2 x 1024 x 2 B = 896 MiB (logged 896).

This machine has no GPU, so these are the only GPU-side accuracy checks that run here.
"""

from __future__ import annotations

import pytest

from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.core.estimation.cuda_overhead import (
    GPU_OVERHEAD_CUBLAS,
    GPU_OVERHEAD_CUBLAS_NO_FLASH,
    GPU_OVERHEAD_QUANTIZED,
    LOAD_EXTRA,
    gpu_overhead,
    uses_cublas,
)
from gpufleet.core.estimation.gpu_types import parse_gpu_type
from gpufleet.core.gguf import parse_gguf_header
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.model_metadata import metadata_from_gguf
from tests.support.synthetic_models import F16, Q8_0, LlamaShape, gguf_header, llama_metadata, llama_tensors

MiB = 1 << 20
H200 = parse_gpu_type("H200").memory

SMALL = LlamaShape(n_layers=16, n_embd=2048, n_heads=16, n_kv_heads=4, n_ff=8192, context=32768,
                   n_vocab=32000, weight_type=F16, file_type=1)
SMALL_Q8 = LlamaShape(n_layers=16, n_embd=2048, n_heads=16, n_kv_heads=4, n_ff=8192, context=32768,
                      n_vocab=32000, weight_type=Q8_0, file_type=7)
TIED_3B = LlamaShape(n_layers=28, n_embd=3072, n_heads=24, n_kv_heads=8, n_ff=8192, context=8192,
                     n_vocab=128256, weight_type=F16, file_type=1)


def model(shape: LlamaShape, tied: bool = False) -> ModelMetadata:
    tensors = [t for t in llama_tensors(shape) if not (tied and t[0] == "output.weight")]
    head, data = gguf_header(llama_metadata(shape), tensors)
    return metadata_from_gguf(parse_gguf_header(head, len(head) + data), len(head) + data)


#: (case, model, flags, logged CUDA0 model/KV/compute MiB, nvidia-smi MiB after the prompt)
H200_CASES = [
    ("f16 -c 4096", model(SMALL), ("--ctx-size=4096",), (1981, 128, 68), 2874),
    ("f16 -c 32768", model(SMALL), ("--ctx-size=32768",), (1981, 1024, 96), 3798),
    ("f16 -c 8192 --parallel 4", model(SMALL), ("--ctx-size=8192", "--parallel=4"), (1981, 256, 66), 3000),
    ("f16 -ngl 8 -c 4096", model(SMALL), ("--ctx-size=4096", "--n-gpu-layers=8"), (937, 56, 92), 1786),
    ("3B tied f16 -c 8192", model(TIED_3B, tied=True), ("--ctx-size=8192",), (6128, 896, 80), 7804),
    ("3B tied f16 -c 8192 -fa off", model(TIED_3B, tied=True), ("--ctx-size=8192", "--flash-attn=off"),
     (6128, 896, 434), 8184),
    ("q8_0 -c 4096", model(SMALL_Q8), ("--ctx-size=4096",), (1053, 128, 68), 1852),
]


@pytest.mark.parametrize(("case", "meta", "flags", "logged", "smi"), H200_CASES, ids=[c[0] for c in H200_CASES])
def test_gpu_estimate_matches_nvidia_smi_on_the_h200(case: str, meta: ModelMetadata, flags: tuple[str, ...],
                                                     logged: tuple[int, int, int], smi: int) -> None:
    gpu = estimate(meta, EstimateOptions(backend_params=flags, gpu_memory=(H200,))).gpus[0]
    weights, kv, work = logged
    # Weights and KV are exact arithmetic (to the log's rounding to whole MiB in the note).
    assert abs(gpu.weights - weights * MiB) <= MiB, (gpu.weights / MiB, weights)
    assert gpu.kv_cache == kv * MiB
    # Compute: the buffer goal, max(3 %, 64 MiB); achieved within 13 MiB here.
    assert abs(gpu.compute - work * MiB) <= 13 * MiB, (gpu.compute / MiB, work)
    # The whole GPU: the goal is max(3 %, 256 MiB) of nvidia-smi; achieved within 1 %.
    assert abs(gpu.total - smi * MiB) <= max(0.01 * smi * MiB, 16 * MiB), (case, gpu.total / MiB, smi)


def test_host_ram_beside_a_gpu_matches_the_h200_rss() -> None:
    """2 GiB F16 model, -c 4096, full offload: RSS ~644 MiB after a prompt. The estimate:
    token embedding 2048 x 32,000 x 2 B = 125 MiB (CPU_Mapped) + graph inputs 512 x (2048 x 4
    + 16) B + mask 4096 x 512 x 2 B = 8 MiB + logits 0.12 MiB + 16 MiB base + 192 B x 32,000
    tokenizer + 474 MiB of CUDA runtime (310 process + 180 libraries - the 16 MiB base) = 629 MiB."""
    est = estimate(model(SMALL), EstimateOptions(backend_params=("--ctx-size=4096",), gpu_memory=(H200,)))
    assert abs(est.ram - 644 * MiB) <= 0.05 * 644 * MiB, est.ram / MiB
    assert round(est.ram / MiB) == 629


def test_load_peak_is_the_mapped_file_plus_0_3_gib() -> None:
    meta = model(SMALL)  # file: 16 blocks + output + embedding = 2106 MiB (F16)
    est = estimate(meta, EstimateOptions(backend_params=("--ctx-size=4096",), gpu_memory=(H200,)))
    assert est.ram_load_peak == meta.file_size + LOAD_EXTRA
    assert est.ram_load_peak > est.ram  # placement claims the steady figure: the excess is page cache
    no_mmap = estimate(meta, EstimateOptions(backend_params=("--ctx-size=4096", "--no-mmap"), gpu_memory=(H200,)))
    assert no_mmap.ram_load_peak == no_mmap.ram  # read in chunks, never the whole file at once
    cpu = estimate(meta, EstimateOptions(backend_params=("--ctx-size=4096",)))
    assert cpu.ram_load_peak == cpu.ram  # on the CPU the mapped weights are part of the steady figure


@pytest.mark.parametrize(("by_dtype", "tensor_bytes", "flash", "expected"), [
    ({"F16": 1000, "F32": 10}, 1010, True, GPU_OVERHEAD_CUBLAS),  # F16 matrices: cuBLAS, 705 MiB
    ({"BF16": 1000}, 1000, True, GPU_OVERHEAD_CUBLAS),
    ({"Q8_0": 1000, "F32": 10}, 1010, True, GPU_OVERHEAD_QUANTIZED),  # norms only in F32: MMQ, 603 MiB
    ({"Q4_K": 900, "F32": 100}, 1000, True, GPU_OVERHEAD_CUBLAS),  # 10 % F32 > 5 %: F32 matrices
    ({"Q8_0": 1000}, 1000, False, GPU_OVERHEAD_CUBLAS_NO_FLASH),  # -fa off: KQ through cuBLAS, 726 MiB
])
def test_per_gpu_overhead_by_matrix_type(by_dtype: dict[str, int], tensor_bytes: int, flash: bool,
                                         expected: int) -> None:
    assert gpu_overhead(uses_cublas(by_dtype, tensor_bytes), flash) == expected
