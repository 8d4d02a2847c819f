"""Model sources: local paths, Hugging Face and ModelScope, header-only.

:func:`read_metadata` is the one entry point for the server's validation, the
``fetch-metadata`` task and ``gpufleet inspect``/``estimate``. It raises
:class:`ModelNotVisible` (a :class:`ModelSourceError`) for a local path that
does not exist here — it may exist on the workers — and other
:class:`ModelSourceError` subclasses for everything that is really wrong.
"""

from __future__ import annotations

from gpufleet.core.metadata import Category
from gpufleet.core.schemas import ModelMetadata, ModelSource
from gpufleet.sources.errors import (
    FileNotInRepo,
    GatedRepo,
    HubUnavailable,
    ModelNotVisible,
    ModelSourceError,
    NotAModel,
    RepoNotFound,
)
from gpufleet.sources.local import read_local_metadata
from gpufleet.sources.resolve import FileChoice, resolve


def read_metadata(source: ModelSource, category: Category | None = None) -> ModelMetadata:
    """Metadata for any source, reading headers only (bounded local reads, range
    requests on hubs). `category` overrides the detected one."""
    return resolve(source, category)[1]


__all__ = [
    "FileChoice", "FileNotInRepo", "GatedRepo", "HubUnavailable", "ModelNotVisible", "ModelSourceError",
    "NotAModel", "RepoNotFound", "read_local_metadata", "read_metadata", "resolve",
]
