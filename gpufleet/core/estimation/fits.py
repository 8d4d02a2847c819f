"""Does an instance fit a set of GPUs, and if not fully, how many layers would?

Used by ``gpufleet estimate --fits``. A configuration fits when every GPU's
claim is at most its memory. For llama.cpp, when the full offload does not fit,
the largest ``--gpu-layers`` that does is found by bisection over 1..n_layer:
in that range VRAM only grows with the layer count (see
:mod:`gpufleet.core.estimation.llama_cpp`), so log2(n) estimates suffice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpufleet.core.estimation import LLAMA_BACKENDS, estimate
from gpufleet.core.estimation.types import Estimate, EstimateOptions
from gpufleet.core.metadata import ModelMetadata


@dataclass(frozen=True)
class FitResult:
    fits: bool
    estimate: Estimate
    memory: tuple[int, ...]
    best_gpu_layers: int | None = None  # llama.cpp: most layers that fit when everything does not


def _fits(est: Estimate, memory: tuple[int, ...]) -> bool:
    return est.known and all(c <= m for c, m in zip(est.claims, memory, strict=True))


def check_fit(meta: ModelMetadata, options: EstimateOptions, memory: tuple[int, ...]) -> FitResult:
    """Estimate on GPUs of ``memory`` bytes each (``options.gpu_memory`` is replaced)."""
    opts = replace(options, gpu_memory=memory)
    est = estimate(meta, opts)
    if _fits(est, memory) or not est.known or options.backend not in LLAMA_BACKENDS or options.gpu_layers:
        return FitResult(_fits(est, memory), est, memory)
    lo, hi, best = 1, est.total_layers - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if _fits(estimate(meta, replace(opts, gpu_layers=mid)), memory):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return FitResult(False, est, memory, best)
