"""The estimate as stored with a deployment and returned by the API.

:func:`summarize` reduces the per-device :class:`~gpufleet.core.estimation.types.Estimate`
to two reference configurations that every caller understands without knowing
the cluster: the whole model on one GPU (full offload) and the whole model on
the CPU. Placement re-estimates against real devices with
:func:`gpufleet.core.estimation.estimate`; this summary is for display, for
``gpufleet ls/ps`` and for the server's checks at deploy time.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from gpufleet.core.backends.registry import LLAMA_ENGINES
from gpufleet.core.estimation.llama_params import EstimateInputError, parse_llama_params
from gpufleet.core.estimation.types import DeviceUsage, Estimate, EstimateOptions
from gpufleet.core.estimation.vllm import VllmConfig, VllmParamError, parse_vllm_params
from gpufleet.core.metadata import ModelMetadata

#: Size of the one reference GPU in the summary: large enough that nothing is
#: split or refused; it only matters to vLLM's claim, which the summary reports
#: as the need instead (see ``gpu_memory_utilization``).
_REFERENCE_GPU = 1 << 50


class DeviceBreakdown(BaseModel):
    """Bytes one device holds, by what they are for."""

    device: str
    layers: int = 0
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    output: int = 0
    overhead: int = 0
    total: int = 0

    @classmethod
    def of(cls, usage: DeviceUsage) -> DeviceBreakdown:
        return cls(device=usage.device, layers=usage.layers, weights=usage.weights, kv_cache=usage.kv_cache,
                   compute=usage.compute, output=usage.output, overhead=usage.overhead, total=usage.total)


class ResourceEstimate(BaseModel):
    """Memory one instance needs, in bytes. `known=False` means it could not be
    computed (the reason says why) and placement must not trust the numbers."""

    known: bool = True
    reason: str | None = None
    backend: str | None = None
    gpu_vram: int = 0  # VRAM on one GPU when fully offloaded (vLLM: the need, not the claim)
    gpu_ram: int = 0  # host RAM needed alongside a GPU placement (steady; what placement claims)
    gpu_ram_load_peak: int = 0  # host RSS at the peak of loading onto a GPU (mapped file + 0.3 GiB)
    cpu_ram: int = 0  # host RAM when running on CPU only (0 when the backend needs a GPU)
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    output: int = 0
    overhead: int = 0
    context_size: int = 0
    total_layers: int = 0
    gpu_required: bool = False
    gpu_memory_utilization: float | None = Field(
        default=None, description="vLLM: the fraction of each card it takes, whatever the need"
    )
    devices: list[DeviceBreakdown] = Field(default_factory=list, description="the one-GPU configuration")
    cpu_devices: list[DeviceBreakdown] = Field(default_factory=list, description="the CPU-only configuration")
    notes: list[str] = Field(default_factory=list)

    @classmethod
    def unknown(cls, reason: str) -> ResourceEstimate:
        return cls(known=False, reason=reason)


def check_params(backend: str, backend_params: list[str]) -> None:
    """Raise ``ValueError`` with a fix-it message when a memory-relevant
    backend parameter is malformed (e.g. ``--cache-type-k=q9``)."""
    try:
        if backend in LLAMA_ENGINES:
            parse_llama_params(tuple(backend_params))
        elif backend == "vllm":
            parse_vllm_params(tuple(backend_params))
    except (EstimateInputError, VllmParamError) as exc:
        raise ValueError(str(exc)) from exc


def _sum(usages: list[DeviceUsage], attr: str) -> int:
    return sum(getattr(u, attr) for u in usages)


def summarize(
    meta: ModelMetadata | None, backend: str, backend_params: list[str] | tuple[str, ...] = ()
) -> ResourceEstimate:
    """One-GPU full-offload and CPU-only figures of one instance (see module docstring)."""
    from gpufleet.core.estimation import estimate  # the package imports this module

    params = tuple(backend_params)
    if meta is None:
        return ResourceEstimate.unknown("model metadata could not be read on the server")
    gpu_required = backend == "vllm"
    vllm = _vllm_config(params) if gpu_required else None
    world = (vllm.tp or 1) * vllm.pp if vllm else 1
    on_gpu = estimate(meta, EstimateOptions(backend=backend, backend_params=params,
                                            gpu_memory=(_REFERENCE_GPU,) * world))
    if not on_gpu.known:
        return ResourceEstimate(known=False, reason=on_gpu.reason, backend=backend)
    on_cpu = None if gpu_required else estimate(meta, EstimateOptions(backend=backend, backend_params=params))
    whole = list(on_cpu.gpus + (on_cpu.host,)) if on_cpu is not None else list(on_gpu.gpus + (on_gpu.host,))
    return ResourceEstimate(
        backend=backend,
        gpu_vram=max((g.total for g in on_gpu.gpus), default=0),
        gpu_ram=on_gpu.ram,
        gpu_ram_load_peak=on_gpu.ram_load_peak,
        cpu_ram=on_cpu.ram if on_cpu is not None else 0,
        weights=_sum(whole, "weights"),
        kv_cache=_sum(whole, "kv_cache"),
        compute=_sum(whole, "compute"),
        output=_sum(whole, "output"),
        overhead=_sum(whole, "overhead"),
        context_size=on_gpu.context_size,
        total_layers=on_gpu.total_layers,
        gpu_required=gpu_required,
        gpu_memory_utilization=vllm.utilization if vllm else None,
        devices=[DeviceBreakdown.of(u) for u in (on_gpu.host, *on_gpu.gpus)],
        cpu_devices=[DeviceBreakdown.of(on_cpu.host)] if on_cpu is not None else [],
        notes=list(on_gpu.notes),
    )


def _vllm_config(params: tuple[str, ...]) -> VllmConfig | None:
    """None for malformed parameters: the estimate itself then says what is wrong."""
    try:
        return parse_vllm_params(params)
    except VllmParamError:
        return None


def from_estimate(est: Estimate) -> list[DeviceBreakdown]:
    """Per-device rows of any estimate (host first), for display."""
    return [DeviceBreakdown.of(u) for u in (est.host, *est.gpus)]
