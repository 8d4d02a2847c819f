"""Task that estimates one instance's memory from the model's metadata.

It calls the same pure function as ``gpufleet estimate`` and the server's
validation (:func:`gpufleet.core.estimation.summary.summarize`); placement then
re-estimates per device split with :func:`gpufleet.core.estimation.estimate`.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from gpufleet.core.estimation.summary import summarize
from gpufleet.core.schemas import DeploymentConfig, ModelMetadata, ResourceEstimate

MiB = 1 << 20


@task(name="estimate-resources")
def estimate_resources(metadata: ModelMetadata | None, config: DeploymentConfig) -> ResourceEstimate:
    if metadata is not None and config.category and config.category != metadata.category:
        metadata = metadata.model_copy(update={"category": config.category})
    est = summarize(metadata, config.backend, config.backend_params)
    logger = get_run_logger()
    if not est.known:
        logger.warning("estimate unknown: %s", est.reason)
        return est
    logger.info(
        "estimate (%s, ctx %d): %d MiB VRAM on one GPU + %d MiB RAM, or %d MiB RAM on CPU "
        "(weights %d MiB, KV %d MiB, compute %d MiB)",
        est.backend, est.context_size, est.gpu_vram // MiB, est.gpu_ram // MiB, est.cpu_ram // MiB,
        est.weights // MiB, est.kv_cache // MiB, est.compute // MiB,
    )
    return est
