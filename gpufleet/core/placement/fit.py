"""Fit: how the instance could run on a worker, stage by stage.

Each stage returns a :class:`Candidate`, a reason it does not fit, or None when
the stage does not apply (the flags, backend or model do not allow it). The
engine tries the stages in :data:`STAGES` order over all eligible workers and
stops at the first stage that yields a candidate anywhere, so a replica takes
one GPU when one GPU is enough anywhere in the cluster, the smallest number of
GPUs of one worker otherwise, and only then several workers, partial offload or
the CPU. Memory figures come from :mod:`gpufleet.core.estimation` with the real
devices of the candidate: their card sizes, the tensor split (proportional to
free memory, which is what gpufleet passes as ``--tensor-split``) and the number
of layers on GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpufleet.core.estimation import Estimate
from gpufleet.core.placement.filters import FilterContext
from gpufleet.core.placement.ledger import GpuState, WorkerState
from gpufleet.core.placement.reasons import gib
from gpufleet.core.placement.request import CPU_CAPABLE, DISTRIBUTABLE, EstimateCache
from gpufleet.core.placement_spec import Stage

#: The most GPUs one distributed instance is spread over (llama.cpp RPC gets slow beyond).
MAX_DISTRIBUTED_GPUS = 16


@dataclass(frozen=True)
class Candidate:
    """One way to run the instance. ``gpus`` may span workers (distributed);
    ``claims`` are aligned with ``gpus``; ``ram`` is host RAM on ``worker``."""

    worker: WorkerState
    gpus: tuple[GpuState, ...]
    claims: tuple[int, ...]
    ram: int
    stage: Stage
    estimate: Estimate | None
    split: tuple[float, ...] = ()
    exclusive: bool = False


@dataclass
class FitContext:
    filters: FilterContext
    cache: EstimateCache
    _single: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def spec(self):  # noqa: ANN201 - PlacementSpec
        return self.filters.request.spec

    @property
    def backend(self) -> str:
        return self.filters.request.backend

    def single_need(self, card_total: int) -> tuple[int, int]:
        """(VRAM claim, host RAM) of the whole instance on one card of this size."""
        need = self._single.get(card_total)
        if need is None:
            est = self.cache.single(card_total)
            claims = _claims(est)
            fits_card = bool(claims) and (not est.vram or est.vram[0] <= claims[0])
            need = self._single[card_total] = (claims[0] if fits_card else 1 << 62, est.ram)
        return need


def _claims(est: Estimate) -> tuple[int, ...]:
    return est.claims or est.vram


def _ram_fits(w: WorkerState, ram: int, gpus: tuple[GpuState, ...], claims: tuple[int, ...]) -> bool:
    """Host RAM on the main worker, plus the VRAM claims on GPUs that share their
    worker's RAM (unified memory) — on every worker involved."""
    need = {w.name: ram}
    hosts = {w.name: w}
    for g, c in zip(gpus, claims):
        if g.unified and g.host is not None:
            need[g.worker] = need.get(g.worker, 0) + c
            hosts[g.worker] = g.host
    return all(n <= hosts[name].ram_free for name, n in need.items())


def _vram_fits(gpus: tuple[GpuState, ...], claims: tuple[int, ...], needs: tuple[int, ...] = ()) -> bool:
    """Each claim fits the GPU's free memory, and each need fits its claim (a vLLM
    claim is utilization × card; a model larger than that does not run there)."""
    if len(claims) != len(gpus) or any(c > g.free for g, c in zip(gpus, claims)):
        return False
    return all(n <= c for n, c in zip(needs, claims))


def _split(gpus: tuple[GpuState, ...]) -> tuple[float, ...]:
    """Proportional to free memory, normalised to the largest and rounded to 0.001,
    so that equally free GPUs share one cached estimate."""
    top = max(g.free for g in gpus)
    return tuple(round(max(g.free, 0) / top, 3) for g in gpus) if top > 0 else tuple(1.0 for _ in gpus)


def _by_free(gpus: list[GpuState]) -> list[GpuState]:
    return sorted(gpus, key=lambda g: (-g.free, g.index))


def single_gpu(w: WorkerState, gpus: list[GpuState], fc: FitContext, strategy: str) -> Candidate | str | None:
    """One GPU: spread takes the GPU left with most free memory, binpack the one left
    fullest; ties go to the lower index. This is the hot path of placement."""
    k = fc.spec.gpus_per_replica
    if (k is not None and k > 1) or not gpus:
        return None
    binpack = strategy == "binpack"
    best: GpuState | None = None
    best_left = 0
    short_ram = 0
    for g in gpus:  # ascending index
        claim, ram = fc.single_need(g.total)
        left = g.free - claim
        if left < 0:
            continue
        if ram + (claim if g.unified else 0) > w.ram_free:
            short_ram = ram
            continue
        if best is None or (left < best_left if binpack else left > best_left):
            best, best_left = g, left
    if best is not None:
        est = fc.cache.single(best.total)
        return Candidate(w, (best,), (best.free - best_left,), est.ram, "single-gpu", est,
                         exclusive=fc.filters.request.exclusive)
    if short_ram:
        return f"needs {gib(short_ram)} RAM alongside the GPU, {gib(w.ram_free)} free"
    largest = max(gpus, key=lambda g: (g.free, -g.index))
    est = fc.cache.single(largest.total)
    need = max(est.vram[0] if est.vram else 0, _claims(est)[0] if _claims(est) else 0)
    return f"needs {gib(need)} VRAM on one GPU, largest free {gib(largest.free)}"


def _tp_sizes(fc: FitContext, sizes: list[int]) -> tuple[list[int], str | None]:
    """vLLM's rule: the tensor-parallel size divides attention heads and vocabulary size."""
    meta = fc.filters.request.metadata
    if fc.backend != "vllm" or meta is None:
        return sizes, None
    ok = [k for k in sizes if (not meta.n_heads or meta.n_heads % k == 0)
          and (not meta.vocab_size or meta.vocab_size % k == 0)]
    if ok:
        return ok, None
    return [], (f"no GPU count in {sizes[0]}..{sizes[-1]} divides the model's {meta.n_heads} attention heads "
                f"and {meta.vocab_size}-token vocabulary (vLLM tensor parallelism)")


def _on_gpus(w: WorkerState, top: tuple[GpuState, ...], fc: FitContext, stage: Stage,
             gpu_layers: int | None = None) -> tuple[Candidate | None, Estimate]:
    if stage == "distributed":  # llama.cpp's device order: RPC devices first, the main worker's GPUs last
        top = tuple(sorted(top, key=lambda g: (g.worker == w.name, g.worker, g.index)))
    else:
        top = tuple(sorted(top, key=lambda g: (g.worker != w.name, g.worker, g.index)))
    split = _split(top) if fc.backend in CPU_CAPABLE else None
    est = fc.cache.get(tuple(g.total for g in top), split, gpu_layers)
    claims = _claims(est)
    if _vram_fits(top, claims, est.vram) and _ram_fits(w, est.ram, top, claims):
        return Candidate(w, top, claims, est.ram, stage, est, split or (),
                         exclusive=fc.filters.request.exclusive), est
    return None, est


def multi_gpu(w: WorkerState, gpus: list[GpuState], fc: FitContext, strategy: str) -> Candidate | str | None:
    """The smallest number of this worker's GPUs that holds the instance (most free first)."""
    k = fc.spec.gpus_per_replica
    if len(gpus) < 2 or k == 1:
        return None
    if k is not None and k > len(gpus):
        return f"needs {k} GPUs (--gpus-per-replica), {len(gpus)} usable"
    sizes, why = _tp_sizes(fc, [k] if k else list(range(2, len(gpus) + 1)))
    if why:
        return why
    ordered = _by_free(gpus)
    est = None
    for size in sizes:
        cand, est = _on_gpus(w, tuple(ordered[:size]), fc, "multi-gpu")
        if cand is not None:
            return cand
    assert est is not None
    size = sizes[-1]
    top = ordered[:size]
    if _vram_fits(tuple(sorted(top, key=lambda g: g.index)), _claims(est), est.vram):
        return f"needs {gib(est.ram)} RAM with {size} GPUs, {gib(w.ram_free)} free"
    claims, needs = _claims(est), est.vram or _claims(est)
    need, free = sum(max(c, n) for c, n in zip(claims, needs)), sum(g.free for g in top)
    for g, c, n in zip(sorted(top, key=lambda g: g.index), claims, needs):
        if n > c:  # vLLM: the model's share is more than utilization x card
            return (f"does not fit on {size} GPUs either: each needs {gib(n)}, "
                    f"{gib(c)} usable per GPU at vLLM's memory utilization")
        if need <= free and c > g.free:  # enough in total, but the layer split overfills one GPU
            return f"does not fit on {size} GPUs either: GPU {g.index} would need {gib(c)}, {gib(g.free)} free"
    return f"does not fit on {size} GPUs either: needs {gib(need)} VRAM over {size} GPUs, {gib(free)} free on them"


def offload(w: WorkerState, gpus: list[GpuState], fc: FitContext, strategy: str) -> Candidate | str | None:
    """--cpu-offloading: as many layers on this worker's GPUs as fit, the rest on the CPU.
    Fewer GPU layers never need more VRAM, so the largest fitting count is found by
    bisection (log2(layers) estimates, 7 for an 80-layer 70B model)."""
    if not (fc.spec.cpu_offloading and fc.backend in CPU_CAPABLE) or not gpus:
        return None
    k = fc.spec.gpus_per_replica
    top = tuple(sorted(_by_free([g for g in gpus if g.free > 0])[: k or len(gpus)], key=lambda g: g.index))
    if not top:
        return "no free VRAM for any layer"
    totals, split = tuple(g.total for g in top), _split(top)
    total = fc.cache.cpu().total_layers
    lo, hi, best = 1, max(total - 1, 0), None
    while lo <= hi:
        mid = (lo + hi) // 2
        est = fc.cache.get(totals, split, mid)
        if _vram_fits(top, _claims(est), est.vram):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    if best is None:
        return "not even one layer fits on its GPUs"
    cand, est = _on_gpus(w, top, fc, "offload", best)
    if cand is None:
        return f"with {best}/{total} layers on GPU the CPU part needs {gib(est.ram)} RAM, {gib(w.ram_free)} free"
    return cand


def cpu_only(w: WorkerState, gpus: list[GpuState], fc: FitContext, strategy: str) -> Candidate | str | None:
    """llama.cpp on the CPU alone. A worker without GPUs always may; a worker with GPUs
    only with --cpu-offloading: a model meant for GPUs that fits none of them stays
    PENDING with the reason instead of landing silently on a big-RAM host's CPU. GPUs
    selected by hand (--gpu) pin the instance to them unless --cpu-offloading."""
    if fc.backend not in CPU_CAPABLE or (fc.filters.manual and not fc.spec.cpu_offloading):
        return None
    if w.gpus and not fc.spec.cpu_offloading:
        return "not on its CPU: it has GPUs (allow the CPU with --cpu-offloading)"
    est = fc.cache.cpu()
    if est.ram <= w.ram_free:
        return Candidate(w, (), (), est.ram, "cpu", est)
    return f"CPU needs {gib(est.ram)} RAM, {gib(w.ram_free)} free"


def distributed(pool: list[tuple[WorkerState, list[GpuState]]], fc: FitContext) -> Candidate | str | None:
    """--distributed (llama.cpp RPC): the fewest GPUs across the fewest workers — the
    workers with most free VRAM first, each one's GPUs most free first. The main
    process (and its host RAM) is on the worker holding most of those GPUs."""
    if not fc.spec.distributed or fc.backend not in DISTRIBUTABLE:
        return None
    unable = [w.name for w, _ in pool if not w.snapshot.rpc]
    pool = [(w, gs) for w, gs in pool if w.snapshot.rpc]
    if unable and len(pool) < 2:
        return (f"--distributed needs two or more workers that run llama.cpp RPC; {', '.join(unable)} cannot "
                "(no rpc-server and RPC-enabled llama-server there: run scripts/build-llama-cpp.sh on it)")
    room = {w.name: sum(max(g.free, 0) for g in gs) for w, gs in pool}
    gpus = sorted((g for _, gs in pool for g in gs if g.free > 0),
                  key=lambda g: (-room[g.worker], g.worker, -g.free, g.index))[:MAX_DISTRIBUTED_GPUS]
    workers = {w.name: w for w, _ in pool}
    last = None
    k = fc.spec.gpus_per_replica
    if k is not None and k > len(gpus):
        return f"needs {k} GPUs (--gpus-per-replica), {len(gpus)} usable on all workers together"
    for size in [k] if k else range(2, len(gpus) + 1):
        top = gpus[:size]
        names = {g.worker for g in top}
        if len(names) < 2:
            continue  # one worker's GPUs were tried by the multi-GPU stage
        main = max(names, key=lambda n: (sum(g.worker == n for g in top), -sorted(names).index(n)))
        cand, last = _on_gpus(workers[main], tuple(top), fc, "distributed")
        if cand is not None:
            return cand
    if last is None:
        return "no GPUs on two or more workers to distribute over"
    return (f"does not fit across workers either: needs {gib(sum(_claims(last)))} VRAM, "
            f"{gib(sum(g.free for g in gpus))} free on the {len(gpus)} GPUs with most room")
