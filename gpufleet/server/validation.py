"""Checks a deployment spec before anything is recorded: backend parameters, the
model's metadata (header only) and its estimate. Bad input raises
:class:`InvalidSpec` (a 400 at the API), so nothing is half-written."""

from __future__ import annotations

from gpufleet.core.backends import llama_cpp
from gpufleet.core.backends.params import BackendParamError
from gpufleet.core.estimate import estimate_llama_cpp
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.schemas import DeploymentSpec, ResourceEstimate
from gpufleet.sources import ModelSourceError, read_metadata


class InvalidSpec(ValueError):
    """The spec cannot be deployed as given; the message says why and how to fix it."""


def validate_spec(spec: DeploymentSpec) -> tuple[ModelMetadata | None, ResourceEstimate]:
    try:
        llama_cpp.validate_params(spec.backend_params)
    except BackendParamError as exc:
        raise InvalidSpec(str(exc)) from exc
    try:
        metadata = read_metadata(spec.source)
    except ModelSourceError as exc:
        raise InvalidSpec(f"{exc} (checked on the gpufleet server)") from exc
    return metadata, estimate_llama_cpp(metadata, llama_cpp.context_size(spec.backend_params))
