"""What a llama.cpp process costs on and beside a CUDA GPU beyond its logged buffers.

llama.cpp logs its model, KV and compute buffers per device; the process holds
more than that. These constants are **measured**, on one NVIDIA H200 (driver
580.159.04, CUDA 13.0, llama.cpp b11434 built with ``-DGGML_CUDA=ON
-DCMAKE_CUDA_ARCHITECTURES=90``), F16 and Q8_0 llama models of 1-7 GiB,
contexts 4k-32k, flash attention on and off, full and partial offload, comparing
llama.cpp's ``-lv 4`` buffer lines with ``nvidia-smi``'s per-process figure and
the process RSS (``/work/shared/notes/gpu-h200.md``, 2026-12-04; issue 12).

Per GPU, ``nvidia-smi`` minus the CUDA buffers llama.cpp logged (MiB):

=========================================  ===========  =====================
case                                       after load   after a 1,501-token prompt
=========================================  ===========  =====================
F16, flash attention on (5 cases)          588-590      697-705
F16, ``-fa off``                           588          726
Q8_0, flash attention on                   589          603
=========================================  ===========  =====================

- about 526 MiB of the 589 is the bare CUDA context (module images, the
  primary context's heap); the rest is llama.cpp's CUDA backend (streams, the
  memory pool's first chunks);
- the step after the first prompt is cuBLAS: F16/BF16 (and F32) matrix products,
  and the KQ/KQV products of attention without flash attention, go through
  cuBLAS, whose handle and workspace appear on first use (+108-116 MiB with
  flash attention, +137 MiB without); quantized matrices use llama.cpp's own
  MMQ/MMVQ kernels (+14 MiB for Q8_0).

Placement must hold what the process holds once it serves, so the estimate
uses the after-prompt figure, the largest measured in its class (a reservation
should not be exceeded). A quantized model with flash attention off was not
measured; its attention products go through cuBLAS like the F16 ``-fa off``
case, so it gets that case's figure.

Host side (RSS, full offload, 2 GiB F16 model, ``-c 4096``): 644 MiB after a
prompt, of which the buffers are the CPU-mapped token embedding (125 MiB),
the pinned ``CUDA_Host`` compute buffer (18-48 MiB) and the output buffer;
beyond them about 310 MiB of process memory and about 180 MiB of mapped
CUDA/cuBLAS libraries. While loading, peak RSS reaches about the whole file
plus 0.3 GiB: the mapped file is read in full while its tensors are uploaded.
Those file pages are clean page cache (the kernel drops them under pressure,
they never go to swap); see :func:`load_peak_ram`.
"""

from __future__ import annotations

MiB = 1 << 20

#: The bare CUDA context, measured on the H200 (about 526 MiB of the 589 after load).
CUDA_CONTEXT = 526 * MiB
#: Per GPU right after the model is loaded: context + llama.cpp's CUDA backend (588-590 measured).
GPU_OVERHEAD_LOADED = 590 * MiB
#: Per GPU after the first prompt when every matrix product uses llama.cpp's quantized kernels
#: (Q8_0, flash attention on: 603 measured).
GPU_OVERHEAD_QUANTIZED = 603 * MiB
#: ... when F16/BF16/F32 matrices go through cuBLAS, flash attention on (697-705 measured; the largest).
GPU_OVERHEAD_CUBLAS = 705 * MiB
#: ... when attention runs without flash attention (KQ and KQV through cuBLAS; 726 measured with F16).
GPU_OVERHEAD_CUBLAS_NO_FLASH = 726 * MiB

#: Host memory of a process that drives CUDA GPUs, beyond its buffers: process memory (~310 MiB)
#: plus mapped CUDA/cuBLAS libraries (~180 MiB), measured as RSS on the H200 host.
HOST_CUDA_PROCESS = 310 * MiB
HOST_CUDA_LIBRARIES = 180 * MiB
#: Peak RSS while loading exceeds the file size by about 0.3 GiB (H200 host).
LOAD_EXTRA = 300 * MiB

#: Weight types whose matrix products go through cuBLAS on CUDA (not llama.cpp's MMQ kernels).
CUBLAS_TYPES = ("F16", "BF16", "F32")
#: Quantized models keep 1-D tensors (norms, biases) in F32; below this share of the weights,
#: F32 is taken to be those, not matrices.
F32_MATRIX_SHARE = 0.05


def uses_cublas(weight_bytes_by_dtype: dict[str, int], tensor_bytes: int) -> bool:
    """Whether the model's matrix products go through cuBLAS on CUDA: it has F16/BF16
    matrices, or F32 beyond the norms and biases of a quantized model."""
    if weight_bytes_by_dtype.get("F16", 0) or weight_bytes_by_dtype.get("BF16", 0):
        return True
    return tensor_bytes > 0 and weight_bytes_by_dtype.get("F32", 0) > F32_MATRIX_SHARE * tensor_bytes


def gpu_overhead(cublas: bool, flash: bool) -> int:
    """Bytes per GPU beyond llama.cpp's buffers once the process has served a prompt."""
    if not flash:
        return GPU_OVERHEAD_CUBLAS_NO_FLASH
    return GPU_OVERHEAD_CUBLAS if cublas else GPU_OVERHEAD_QUANTIZED


def load_peak_ram(steady_ram: int, mapped_file_bytes: int) -> int:
    """Peak RSS while a GPU process loads: the whole mapped file plus 0.3 GiB, or the
    steady figure if that is larger. Placement claims the steady figure: the excess is
    clean file-backed page cache that the kernel reclaims instead of swapping."""
    return max(steady_ram, mapped_file_bytes + LOAD_EXTRA)
