"""Compatibility shim: the estimator moved to :mod:`gpufleet.core.estimation`.

Kept only until its last users (``gpufleet/server/validation.py``,
``gpufleet/node/backends.py``, ``tests/integration/test_store.py``) import the new
package; then this file is deleted.
"""

from __future__ import annotations

from gpufleet.core.estimation.llama_params import DEFAULT_CONTEXT
from gpufleet.core.estimation.summary import ResourceEstimate, summarize
from gpufleet.core.metadata import ModelMetadata

__all__ = ["DEFAULT_CONTEXT", "estimate_llama_cpp"]


def estimate_llama_cpp(meta: ModelMetadata, context_size: int | None = None) -> ResourceEstimate:
    """One llama.cpp replica on one GPU or on the CPU (see :func:`summarize`)."""
    params = [f"--ctx-size={context_size}"] if context_size else []
    return summarize(meta, "llama.cpp", params)
