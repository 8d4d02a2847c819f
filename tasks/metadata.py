"""Task that learns about a model before anything is downloaded."""

from __future__ import annotations

from prefect import get_run_logger, task

from gpufleet.core.schemas import ModelMetadata, ModelSource
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
