"""Memory estimation: pure functions from model metadata and options to a
per-device breakdown (see :mod:`gpufleet.core.estimation.types`).

One entry point, :func:`estimate`, dispatching on the backend; placement calls
it many times per decision with different devices, so it does no I/O and
caches per-model work (a re-estimate is well under a millisecond, see
``benchmarks/estimate_speed.py``). Formulas, units and sources are in each
backend's module and in ``docs/estimation.md``.
"""

from __future__ import annotations

from gpufleet.core.backends.registry import ENGINE_NAMES, LLAMA_ENGINES
from gpufleet.core.estimation.audio import estimate_audio
from gpufleet.core.estimation.llama_cpp import estimate_llama_cpp_split
from gpufleet.core.estimation.types import DeviceUsage, Estimate, EstimateOptions
from gpufleet.core.estimation.vllm import estimate_vllm
from gpufleet.core.metadata import ModelMetadata

__all__ = ["BACKENDS", "DeviceUsage", "Estimate", "EstimateOptions", "estimate"]

LLAMA_BACKENDS = LLAMA_ENGINES
BACKENDS = ENGINE_NAMES


def estimate(meta: ModelMetadata | None, options: EstimateOptions) -> Estimate:
    """Dispatch on the backend; an unreadable model is ``unknown``, never zero."""
    if meta is None:
        return Estimate.unknown(options.backend, "model metadata could not be read on the server")
    if options.backend in LLAMA_BACKENDS:
        if meta.format != "gguf":
            return Estimate.unknown(options.backend, f"{options.backend} runs GGUF files; this model is {meta.format}")
        return estimate_llama_cpp_split(meta, options)
    if options.backend == "vllm":
        return estimate_vllm(meta, options)
    if options.backend == "vox-box":
        return estimate_audio(meta, options)
    return Estimate.unknown(options.backend, f"no estimator for backend {options.backend!r}; "
                                             f"known backends: {', '.join(BACKENDS)}")
