"""Model sources: local paths now; Hugging Face and ModelScope build on the same interface."""

from __future__ import annotations

from gpufleet.core.schemas import ModelMetadata, ModelSource
from gpufleet.sources.local import ModelSourceError, read_local_metadata


def read_metadata(source: ModelSource) -> ModelMetadata:
    """Metadata for any source, without downloading weights."""
    if source.kind == "local_path":
        assert source.local_path is not None
        return read_local_metadata(source.local_path)[1]
    raise ModelSourceError(
        f"{source.kind} sources are not supported yet; deploy a local path (--local-path)"
    )


__all__ = ["ModelSourceError", "read_metadata", "read_local_metadata"]
