"""Tasks that learn about a model before anything is downloaded."""

from __future__ import annotations

from prefect import get_run_logger, task

from gpufleet.core.backends import llama_cpp
from gpufleet.core.estimate import estimate_llama_cpp
from gpufleet.core.schemas import DeploymentConfig, ModelMetadata, ModelSource, ResourceEstimate
from gpufleet.sources import ModelSourceError, read_metadata
from tasks._retry import NETWORK_TASK


@task(name="fetch-metadata", **NETWORK_TASK)
def fetch_metadata(source: ModelSource) -> ModelMetadata | None:
    """Header-only read. None (not an error) when the server cannot see the model:
    the workers may, and placement then goes ahead without an estimate."""
    try:
        meta = read_metadata(source)
    except ModelSourceError as exc:
        get_run_logger().warning("model metadata unavailable here: %s", exc)
        return None
    get_run_logger().info(
        "%s: %s, %d layers, %.1f M parameters, %d MiB of weights",
        source.describe(), meta.architecture, meta.n_layers, meta.n_params / 1e6,
        meta.tensor_bytes >> 20,
    )
    return meta


@task(name="estimate-resources")
def estimate_resources(metadata: ModelMetadata | None, config: DeploymentConfig) -> ResourceEstimate:
    if metadata is None:
        return ResourceEstimate.unknown("model metadata could not be read on the server")
    est = estimate_llama_cpp(metadata, llama_cpp.context_size(config.backend_params))
    get_run_logger().info(
        "estimate: %d MiB VRAM on one GPU or %d MiB RAM on CPU (weights %d MiB, KV %d MiB, ctx %d)",
        est.gpu_vram >> 20, est.cpu_ram >> 20, est.weights >> 20, est.kv_cache >> 20,
        est.context_size,
    )
    return est
