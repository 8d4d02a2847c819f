"""The placement pipeline, assembled. For each replica, in this order:

1. filters (once per request, :data:`filters.FILTERS`): worker ready → worker
   selector → manual GPU set → backend support. A rejected worker keeps its reason.
2. fit, stage by stage over all remaining workers (:mod:`fit`): single GPU →
   several GPUs of one worker (smallest count) → several workers (--distributed)
   → partial CPU offload (--cpu-offloading) → CPU only. The first stage with a
   candidate anywhere wins; later stages are not tried.
3. rank the candidates of that stage and take the first: spread by score
   (:mod:`scoring`); binpack by best fit first — the least GPU memory left
   on the candidate's GPUs after its claim, so a small replica takes the
   tightest card anywhere and large cards stay whole — then by score (worker
   utilisation). Offload and CPU candidates rank by score under both.
   Remaining ties go to the lower worker name, then the lower GPU indexes.
4. record the claim in the ledger, so the next replica sees it.

An unplaceable replica gets an :class:`Unplaceable` with a reason for every
worker. An unknown estimate (the server could not read the model) still
places, on the best eligible worker, claiming nothing, and says so.

Speed: the single-GPU stage keeps a heap of each worker's best candidate, keyed
by rank; placing a replica changes one worker, whose entry is recomputed
(O(GPUs of that worker) + O(log workers)) instead of rescanning the cluster.
A Placer can be kept and called again after the ledger changed under it (claims
taken or released by other placers or by :class:`~gpufleet.core.placement.live.LiveLedger`):
it reads the ledger's change log and refreshes only the workers touched since
its last call. A change of membership (:attr:`Ledger.topology`) needs a new Placer.
"""

from __future__ import annotations

import heapq

from gpufleet.core.estimation import Estimate
from gpufleet.core.placement.cluster import ClaimSnapshot, ClusterSnapshot
from gpufleet.core.placement.filters import FilterContext, first_rejection, unusable_reason, usable_gpus
from gpufleet.core.placement.fit import (
    Candidate,
    FitContext,
    cpu_only,
    distributed,
    multi_gpu,
    offload,
    single_gpu,
)
from gpufleet.core.placement.ledger import Ledger, WorkerState
from gpufleet.core.placement.reasons import Unplaceable
from gpufleet.core.placement.request import CPU_CAPABLE, EstimateCache, Estimator, PlacementRequest
from gpufleet.core.placement.scoring import score
from gpufleet.core.placement_spec import Placement, PlacementPart
from gpufleet.core.estimation import estimate as default_estimator

PER_WORKER_STAGES = (multi_gpu, offload, cpu_only)  # after single-GPU; distributed sits between


def rank(c: Candidate, total: float, strategy: str) -> tuple[float, ...]:
    """Sort key of a scored candidate, smallest first (see the module docstring, step 3)."""
    if strategy != "binpack" or not c.gpus or c.stage == "offload":
        return (-total,)
    if len(c.gpus) == 1:
        return (c.gpus[0].free - c.claims[0], -total)
    return (sum(g.free for g in c.gpus) - sum(c.claims), -total)


class _SingleGpuIndex:
    """Best single-GPU candidate of every worker, in a heap keyed by (rank, name).
    Entries carry the worker's version; an entry older than the worker is stale."""

    def __init__(self, placer: Placer) -> None:
        self.placer = placer
        self.heap: list[tuple[tuple[float, ...], str, int, Candidate, float, dict[str, float]]] = []
        self.seen: dict[str, int] = {}  # worker -> version of its newest entry
        for w in placer.eligible:
            self.refresh(w)

    def refresh(self, w: WorkerState) -> None:
        self.seen[w.name] = w.version
        cand = single_gpu(w, self.placer.usable(w), self.placer.fit, self.placer.request.spec.strategy)
        if isinstance(cand, Candidate):
            total, parts = score(cand, self.placer.request)
            key = rank(cand, total, self.placer.request.spec.strategy)
            heapq.heappush(self.heap, (key, w.name, w.version, cand, total, parts))

    def best(self) -> tuple[Candidate, float, dict[str, float]] | None:
        while self.heap:
            _, name, version, cand, total, parts = self.heap[0]
            worker = self.placer.ledger.workers[name]
            if version == worker.version:
                return cand, total, parts
            heapq.heappop(self.heap)
            if self.seen[name] != worker.version:  # changed by another placer sharing the ledger
                self.refresh(worker)
        return None


class Placer:
    """Places the replicas of one request against one ledger, one after another."""

    def __init__(self, cluster: ClusterSnapshot | Ledger, request: PlacementRequest,
                 estimator: Estimator = default_estimator) -> None:
        self.ledger = cluster if isinstance(cluster, Ledger) else Ledger(cluster)
        self.request = request
        self.cache = EstimateCache(request, estimator)
        self.fit = FitContext(FilterContext(request), self.cache)
        self.rejected: dict[str, str] = {}
        self.eligible: list[WorkerState] = []
        for w in self.ledger.ordered():
            reason = first_rejection(w, self.fit.filters)
            if reason is None:
                self.eligible.append(w)
            else:
                self.rejected[w.name] = reason
        self._index: _SingleGpuIndex | None = None
        self._seen = self.ledger.log_end  # ledger changes before this are in the index
        self.topology = self.ledger.topology  # the membership the filters saw
        self._eligible_names = {w.name for w in self.eligible}
        self._failed: tuple[int, Unplaceable] | None = None
        self._instance: int | None = None
        #: The ledger entry of the last placement (what ``Ledger.release`` takes to undo it).
        self.last_claim: ClaimSnapshot | None = None
        self._probe: tuple[Estimate | None] | None = None

    def usable(self, w: WorkerState):  # noqa: ANN201 - list[GpuState]
        return usable_gpus(w, self.fit.filters)

    # ------------------------------------------------------------ public

    def place(self, instance: int | None = None) -> Placement | Unplaceable:
        """Place one replica and apply its claim (recorded for ``instance``, if given)."""
        self._instance = instance
        if not self.eligible:
            return Unplaceable(dict(self.rejected))
        unknown = self._unknown_estimate()
        if unknown is not None:
            return self._place_unknown(unknown)
        if self._failed is not None and self._failed[0] == self.ledger.version:
            return self._failed[1]  # nothing changed since the last replica failed
        if self._index is not None:
            self._catch_up()
        if self._index is None:
            self._index = _SingleGpuIndex(self)
            self._seen = self.ledger.log_end
        best = self._index.best()
        if best is None:
            best = self._later_stages()
        if best is None:
            failure = Unplaceable({**self.rejected, **self._reasons()})
            self._failed = (self.ledger.version, failure)
            return failure
        return self._commit(*best)

    def _catch_up(self) -> None:
        """Refresh the index entries of workers the ledger changed since the last call."""
        assert self._index is not None
        if self.ledger.log_end == self._seen:
            return
        changed = self.ledger.changed_since(self._seen)
        if changed is None:  # the log was trimmed past us: rebuild
            self._index = None
            return
        for name in changed & self._eligible_names:
            self._index.refresh(self.ledger.workers[name])
        self._seen = self.ledger.log_end

    def plan(self, replicas: int) -> list[Placement | Unplaceable]:
        return [self.place() for _ in range(replicas)]

    # ------------------------------------------------------------ stages

    def _later_stages(self) -> tuple[Candidate, float, dict[str, float]] | None:
        pool = [(w, self.usable(w)) for w in self.eligible]
        strategy = self.request.spec.strategy
        for stage in (multi_gpu, "distributed", offload, cpu_only):
            if stage == "distributed":
                found = distributed([(w, g) for w, g in pool if g], self.fit)
                cands = [found] if isinstance(found, Candidate) else []
            else:
                cands = [c for w, g in pool if isinstance(c := stage(w, g, self.fit, strategy), Candidate)]
            if cands:
                return self._pick(cands)
        return None

    def _pick(self, cands: list[Candidate]) -> tuple[Candidate, float, dict[str, float]]:
        scored = [(c, *score(c, self.request)) for c in cands]
        strategy = self.request.spec.strategy
        return min(scored, key=lambda s: (rank(s[0], s[1], strategy), s[0].worker.name, [g.index for g in s[0].gpus]))

    def _reasons(self) -> dict[str, str]:
        """Every eligible worker's reason from every stage that applies to it."""
        strategy = self.request.spec.strategy
        reasons: dict[str, str] = {}
        pool = [(w, self.usable(w)) for w in self.eligible]
        spread = distributed([(w, g) for w, g in pool if g], self.fit)
        for w, gpus in pool:
            said = []
            if w.gpus and not gpus:
                said.append(unusable_reason(w, self.fit.filters))
            for stage in (single_gpu, *PER_WORKER_STAGES):
                why = stage(w, gpus, self.fit, strategy)
                if isinstance(why, str) and why not in said:
                    said.append(why)
            if isinstance(spread, str) and gpus:
                said.append(spread)
            if not w.gpus and self.request.backend in CPU_CAPABLE and not said:
                said.append("has no GPUs and the CPU is not allowed for a manual GPU selection")
            reasons[w.name] = "; ".join(said) or "nothing fits"
        return reasons

    # ------------------------------------------------------------ unknown estimate

    def _unknown_estimate(self) -> Estimate | None:
        if self._probe is None:
            self._probe = (self._probe_estimate(),)
        return self._probe[0]

    def _probe_estimate(self) -> Estimate | None:
        probe_gpu = next((g for w in self.eligible for g in w.gpus), None)
        probe = self.cache.single(probe_gpu.total) if probe_gpu else self.cache.cpu()
        if probe.known and self.request.metadata is not None:
            return None
        return probe

    def _place_unknown(self, probe: Estimate) -> Placement | Unplaceable:
        cands = []
        for w in self.eligible:
            gpus = sorted(self.usable(w), key=lambda g: (-g.free, g.index))
            wants_gpu = self.request.backend not in CPU_CAPABLE or bool(self.fit.filters.manual)
            if wants_gpu and gpus:
                k = self.request.spec.gpus_per_replica or 1
                top = tuple(sorted(gpus[:k], key=lambda g: g.index))
                cands.append(Candidate(w, top, tuple(0 for _ in top), 0, "unknown", None))
            elif not wants_gpu:
                cands.append(Candidate(w, (), (), 0, "unknown", None))
        if not cands:
            return Unplaceable({**self.rejected, **{w.name: "no usable GPU" for w in self.eligible}})
        cand, total, parts = self._pick(cands)
        note = f"estimate unknown ({probe.reason or 'model metadata unavailable'}); nothing claimed"
        return self._commit(cand, total, parts, known=False, note=note)

    # ------------------------------------------------------------ commit

    def _commit(self, c: Candidate, total: float, parts: dict[str, float],
                known: bool = True, note: str = "") -> Placement:
        main = [(g, claim) for g, claim in zip(c.gpus, c.claims) if g.worker == c.worker.name]
        others: dict[str, PlacementPart] = {}
        for g, claim in zip(c.gpus, c.claims):
            if g.worker != c.worker.name:
                part = others.setdefault(g.worker, PlacementPart(worker=g.worker))
                part.gpu_indexes.append(g.index)
                part.vram_claim[g.index] = claim
        est = c.estimate
        placement = Placement(
            worker=c.worker.name,
            gpu_indexes=[g.index for g, _ in main],
            vram_claim={g.index: claim for g, claim in main} if known else {},
            ram_claim=c.ram,
            stage=c.stage,
            gpu_layers=est.gpu_layers if est is not None and c.gpus else (0 if est is not None else None),
            total_layers=est.total_layers if est is not None else None,
            offloaded=bool(est is not None and est.offloaded_to_cpu),
            tensor_split=list(c.split) if len(c.gpus) > 1 else [],
            exclusive=c.exclusive,
            parts=list(others.values()),
            score=total,
            score_breakdown=parts,
            estimate_known=known,
            note=note,
        )
        self.last_claim = claim_of(placement, self.request, self._instance)
        self.ledger.apply(self.last_claim)
        self._failed = None
        if self._index is not None:
            for name in {c.worker.name, *others}:
                self._index.refresh(self.ledger.workers[name])
            self._seen = self.ledger.log_end  # caught up before placing; these are our own changes
        return placement


def claim_of(p: Placement, request: PlacementRequest, instance: int | None = None) -> ClaimSnapshot:
    """The ledger entry of a placement (built unvalidated: its parts are already valid)."""
    return ClaimSnapshot.model_construct(deployment=request.deployment, instance=instance, source=request.source,
                         worker=p.worker, gpu_indexes=p.gpu_indexes, vram_claim=p.vram_claim,
                         ram_claim=p.ram_claim, exclusive=p.exclusive, parts=p.parts)


def place(cluster: ClusterSnapshot, request: PlacementRequest,
          estimator: Estimator = default_estimator) -> Placement | Unplaceable:
    """Place one replica."""
    return Placer(cluster, request, estimator).place()


def plan(cluster: ClusterSnapshot, request: PlacementRequest, replicas: int,
         estimator: Estimator = default_estimator) -> list[Placement | Unplaceable]:
    """Place ``replicas`` replicas in order, each seeing the claims of those before it."""
    return Placer(cluster, request, estimator).plan(replicas)
