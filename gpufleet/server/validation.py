"""Checks a deployment spec before anything is recorded: backend parameters, the
model's metadata (headers only), the backend that will serve it, and its
estimate. Bad input raises :class:`InvalidSpec` (a 400 at the API), so nothing
is half-written.

A local path the server cannot see is not bad input: the workers may hold it
(air-gapped sites copy models onto the GPU machines only). Such a deployment is
recorded with an *unknown* estimate, and a worker that lacks the path puts its
instance in ERROR naming worker and path.
"""

from __future__ import annotations

from gpufleet.core.backends import llama_cpp
from gpufleet.core.backends.choose import NoBackend, choose_backend
from gpufleet.core.estimation.summary import check_params, summarize
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.schemas import DeploymentSpec, ResourceEstimate
from gpufleet.sources import ModelNotVisible, ModelSourceError, read_metadata

#: Backends a gpufleet node can launch today. The others are understood by
#: estimation and placement (`gpufleet estimate`, `gpufleet plan`) but refused
#: at deploy time rather than placed and then failed on a node.
RUNNABLE_BACKENDS = ("llama.cpp",)


class InvalidSpec(ValueError):
    """The spec cannot be deployed as given; the message says why and how to fix it."""


def _check_params(spec: DeploymentSpec) -> None:
    try:
        llama_cpp.validate_params(spec.backend_params)
        check_params(spec.backend, spec.backend_params)
    except ValueError as exc:  # BackendParamError is a ValueError too
        raise InvalidSpec(str(exc)) from exc


def _check_backend(spec: DeploymentSpec, metadata: ModelMetadata) -> None:
    try:
        backend = choose_backend(metadata.format, spec.category or metadata.category, spec.backend)
    except NoBackend as exc:
        raise InvalidSpec(f"{spec.source.describe()}: {exc}") from exc
    if backend not in RUNNABLE_BACKENDS:
        raise InvalidSpec(
            f"{spec.source.describe()} needs the {backend} backend, which gpufleet nodes cannot run yet "
            f"(they run {', '.join(RUNNABLE_BACKENDS)}); `gpufleet estimate` and `gpufleet plan` "
            "already size and place it"
        )


def validate_spec(spec: DeploymentSpec) -> tuple[ModelMetadata | None, ResourceEstimate]:
    """The metadata (None when the server cannot see a local path) and the
    estimate to record with the deployment."""
    _check_params(spec)
    try:
        metadata = read_metadata(spec.source, spec.category)
    except ModelNotVisible as exc:
        return None, ResourceEstimate.unknown(f"{exc} on the gpufleet server; the workers may have it")
    except ModelSourceError as exc:
        raise InvalidSpec(f"{exc} (checked on the gpufleet server)") from exc
    _check_backend(spec, metadata)
    return metadata, summarize(metadata, spec.backend, spec.backend_params)
