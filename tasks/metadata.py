"""Task that learns about a model before anything is downloaded."""

from __future__ import annotations

from prefect import get_run_logger, task

from gpufleet.core.metadata import Category
from gpufleet.core.schemas import ModelMetadata, ModelSource
from gpufleet.sources import HubUnavailable, ModelNotVisible, ModelSourceError, read_metadata
from tasks._retry import NETWORK_TASK


@task(name="fetch-metadata", **NETWORK_TASK)
def fetch_metadata(source: ModelSource, category: Category | None = None) -> ModelMetadata | None:
    """Header-only read (local: bounded reads; hubs: range requests), the same
    code as the server's validation and ``gpufleet inspect``.

    None (not an error) when the metadata cannot be had here: a local path the
    server cannot see (the workers may), or a hub that stays unreachable after
    retries. Placement then goes ahead without an estimate, and pull-weights on
    the worker reports what is really wrong. Other problems (a repo or file that
    vanished since validation) are logged the same way, with their message."""
    log = get_run_logger()
    try:
        meta = read_metadata(source, category)
    except ModelNotVisible as exc:
        log.warning("%s; the workers may see it: placing without an estimate", exc)
        return None
    except HubUnavailable as exc:
        log.warning("model metadata unavailable (hub unreachable): %s", exc)
        return None
    except ModelSourceError as exc:
        log.warning("model metadata unavailable: %s", exc)
        return None
    log.info(
        "%s: %s %s (%s), %d layers, %.1f M parameters, %d MiB of weights in %d file(s)",
        source.describe(), meta.format, meta.architecture, meta.category, meta.n_layers,
        meta.n_params / 1e6, meta.tensor_bytes >> 20, len(meta.files),
    )
    return meta
