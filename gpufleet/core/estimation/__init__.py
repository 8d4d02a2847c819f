"""Memory estimation: pure functions from model metadata and options to a
per-device breakdown (see :mod:`gpufleet.core.estimation.types`)."""

from __future__ import annotations

from gpufleet.core.estimation.llama_cpp import estimate_llama_cpp_split
from gpufleet.core.estimation.types import DeviceUsage, Estimate, EstimateOptions
from gpufleet.core.metadata import ModelMetadata

__all__ = ["DeviceUsage", "Estimate", "EstimateOptions", "estimate"]


def estimate(meta: ModelMetadata | None, options: EstimateOptions) -> Estimate:
    """Dispatch on the backend; an unreadable model is ``unknown``, never zero."""
    if meta is None:
        return Estimate.unknown(options.backend, "model metadata could not be read on the server")
    if options.backend in ("llama.cpp", "llama-box"):
        return estimate_llama_cpp_split(meta, options)
    return Estimate.unknown(options.backend, f"no estimator for backend {options.backend} yet")
