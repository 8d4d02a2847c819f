"""Task that estimates one instance's memory from the model's metadata."""

from __future__ import annotations

from prefect import get_run_logger, task

from gpufleet.core.backends import llama_cpp
from gpufleet.core.estimate import estimate_llama_cpp
from gpufleet.core.schemas import DeploymentConfig, ModelMetadata, ResourceEstimate


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
