"""Choose a worker and GPUs for one instance: first fit, never over-committing.

The cluster is given as a snapshot (workers, their GPUs and the memory already
claimed on each); this module is pure, so the server can run it under its
placement lock and commit the result atomically. Each rule is a small named
function that returns why it rejects, or None; the reasons are collected per
worker so that an instance that cannot be placed says why for every worker.

Order: workers by name, then GPUs by index; a GPU placement is preferred to a
CPU one (a GPU cluster is there to be used). The placement issue replaces this
with spread/binpack scoring behind the same `place()` signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpufleet.core.schemas import Placement, ResourceEstimate

GiB = float(1 << 30)


@dataclass(frozen=True)
class GpuSnapshot:
    index: int
    name: str
    memory_total: int
    claimed: int = 0

    @property
    def free(self) -> int:
        return self.memory_total - self.claimed


@dataclass(frozen=True)
class WorkerSnapshot:
    name: str
    ready: bool
    memory_total: int
    ram_claimed: int = 0
    ram_reserved: int = 0
    gpus: tuple[GpuSnapshot, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def ram_free(self) -> int:
        return self.memory_total - self.ram_reserved - self.ram_claimed


@dataclass(frozen=True)
class Unplaceable:
    """No worker fits; `reasons` maps each worker to why it was rejected."""

    reasons: dict[str, str]

    def message(self) -> str:
        if not self.reasons:
            return "no workers registered; start one with `gpufleet node`"
        return "; ".join(f"{w}: {r}" for w, r in sorted(self.reasons.items()))


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def reject_not_ready(worker: WorkerSnapshot) -> str | None:
    return None if worker.ready else "not ready (no recent heartbeat)"


def reject_host_ram(worker: WorkerSnapshot, need: int) -> str | None:
    if need <= worker.ram_free:
        return None
    return f"needs {_gib(need)} RAM, {_gib(max(worker.ram_free, 0))} free"


def reject_gpu_vram(gpu: GpuSnapshot, need: int) -> str | None:
    if need <= gpu.free:
        return None
    return f"GPU {gpu.index} needs {_gib(need)} VRAM, {_gib(max(gpu.free, 0))} free"


def _gpu_fit(worker: WorkerSnapshot, est: ResourceEstimate) -> tuple[Placement | None, str]:
    if not worker.gpus:
        return None, "has no GPUs"
    ram_reason = reject_host_ram(worker, est.gpu_ram)
    if ram_reason:
        return None, ram_reason
    reasons = []
    for gpu in sorted(worker.gpus, key=lambda g: g.index):
        reason = reject_gpu_vram(gpu, est.gpu_vram)
        if reason is None:
            return Placement(
                worker=worker.name,
                gpu_indexes=[gpu.index],
                vram_claim={gpu.index: est.gpu_vram},
                ram_claim=est.gpu_ram,
            ), ""
        reasons.append(reason)
    largest = max(worker.gpus, key=lambda g: g.free)
    return None, f"needs {_gib(est.gpu_vram)} VRAM on one GPU, largest free {_gib(max(largest.free, 0))}"


def _cpu_fit(worker: WorkerSnapshot, est: ResourceEstimate) -> tuple[Placement | None, str]:
    reason = reject_host_ram(worker, est.cpu_ram)
    if reason:
        return None, reason
    return Placement(worker=worker.name, ram_claim=est.cpu_ram), ""


def place(workers: list[WorkerSnapshot], est: ResourceEstimate) -> Placement | Unplaceable:
    """First fit: a GPU on any ready worker, else the CPU of any ready worker.

    An unknown estimate claims nothing and goes to the first ready worker's CPU:
    the server could not read the model, so the node will find out (and report).
    """
    ready = []
    reasons: dict[str, str] = {}
    for w in sorted(workers, key=lambda w: w.name):
        not_ready = reject_not_ready(w)
        if not_ready:
            reasons[w.name] = not_ready
        else:
            ready.append(w)
    if not est.known:
        if ready:
            return Placement(worker=ready[0].name)
        return Unplaceable(reasons)
    gpu_reasons: dict[str, str] = {}
    for w in ready:
        placement, why = _gpu_fit(w, est)
        if placement:
            return placement
        gpu_reasons[w.name] = why
    for w in ready:
        placement, why = _cpu_fit(w, est)
        if placement:
            return placement
        reasons[w.name] = f"{gpu_reasons[w.name]}; CPU {why}"
    return Unplaceable(reasons)
