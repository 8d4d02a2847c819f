"""Filters: may this worker hold the instance at all? Each returns why not, or None.

They run once per deployment, before any memory arithmetic, in the order of
:data:`FILTERS` (cheapest and most fundamental first, so the reason a user sees
is the one to fix first). Whether a local model path exists is checked by the
node when it starts the instance (the server cannot see the workers' disks).
"""

from __future__ import annotations

from collections.abc import Callable

from gpufleet.core.placement.ledger import GpuState, WorkerState
from gpufleet.core.placement.request import CPU_CAPABLE, PlacementRequest
from gpufleet.core.selectors import GpuRef, WorkerSelector
from gpufleet.core.validation_rules import kv_cache_device_ok


class FilterContext:
    """What the filters need, parsed once per request."""

    def __init__(self, request: PlacementRequest) -> None:
        self.request = request
        self.selector: WorkerSelector = request.selector
        self.manual: dict[str, set[int]] = {}
        for ref in request.manual_gpus:
            self.manual.setdefault(ref.worker, set()).add(ref.index)
        self.manual_refs: tuple[GpuRef, ...] = request.manual_gpus


Filter = Callable[[WorkerState, FilterContext], str | None]


def worker_ready(w: WorkerState, _: FilterContext) -> str | None:
    return None if w.ready else "not ready (no recent heartbeat)"


def selector_match(w: WorkerState, ctx: FilterContext) -> str | None:
    return ctx.selector.mismatch(w.labels)


def manual_gpu_set(w: WorkerState, ctx: FilterContext) -> str | None:
    """With --gpu, only workers named in the selection qualify, and the named GPUs must exist."""
    if not ctx.manual:
        return None
    wanted = ctx.manual.get(w.name)
    if wanted is None:
        return "none of its GPUs is in the --gpu selection"
    missing = sorted(wanted - {g.index for g in w.gpus})
    if missing and len(missing) == len(wanted):
        have = ", ".join(str(g.index) for g in w.gpus) or "none"
        return f"has no GPU {missing} (GPUs: {have})"
    return None


def backend_support(w: WorkerState, ctx: FilterContext) -> str | None:
    backend = ctx.request.backend
    if backend in CPU_CAPABLE or w.gpus:
        return None
    return f"has no GPUs, and {backend} needs one"


def kv_cache_support(w: WorkerState, ctx: FilterContext) -> str | None:
    """The extended KV cache (LMCache) runs beside vLLM on CUDA/ROCm GPUs only; a worker
    with no GPU (unified-memory hosts count as CPU here) is refused with the matrix."""
    if not ctx.request.kv_cache_cpu_bytes:
        return None
    kind = "cuda" if any(not g.unified for g in w.gpus) else "cpu"
    return kv_cache_device_ok(kind, ctx.request.backend)


#: The filter chain, in order.
FILTERS: tuple[Filter, ...] = (worker_ready, selector_match, manual_gpu_set, backend_support, kv_cache_support)


def first_rejection(w: WorkerState, ctx: FilterContext) -> str | None:
    for check in FILTERS:
        reason = check(w, ctx)
        if reason is not None:
            return reason
    return None


def usable_gpus(w: WorkerState, ctx: FilterContext) -> list[GpuState]:
    """GPUs of an eligible worker this request may use: the manual selection (minus
    GPUs another replica of this deployment holds, unless --overcommit), and never a
    GPU that an exclusive (vLLM) instance holds, nor a used one for an exclusive request."""
    wanted = ctx.manual.get(w.name) if ctx.manual else None
    deployment = ctx.request.deployment
    exclusive = ctx.request.exclusive
    overcommit = ctx.request.spec.overcommit
    result = []
    for g in w.gpus:
        if wanted is not None and g.index not in wanted:
            continue
        if wanted is not None and not overcommit and deployment in g.holders:
            continue
        if g.exclusive or (exclusive and g.claims):
            continue
        result.append(g)
    return result


def unusable_reason(w: WorkerState, ctx: FilterContext) -> str:
    """Why an eligible worker has no usable GPU (when that is the problem)."""
    if ctx.manual.get(w.name) is not None and not ctx.request.spec.overcommit:
        return "its selected GPUs are taken by other replicas of this deployment (--overcommit shares them)"
    if ctx.request.exclusive:
        return "no unused GPU (vLLM does not share GPUs)"
    return "its GPUs are held exclusively by vLLM instances"
