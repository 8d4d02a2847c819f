"""A ledger kept up to date by events, for placing replicas one call at a time.

Why: placing a deployment's replicas in one batch reads the cluster once, but
replicas also arrive one by one — scaled up singly, PENDING instances re-placed
when the cluster changes. Building a :class:`Ledger` and a
:class:`~gpufleet.core.placement.engine.Placer` for every such call costs a pass
over every worker and GPU (55 s for 1,000 replicas on 250 × 8 GPUs). A
:class:`LiveLedger` is built once and then told what changes:

- :meth:`LiveLedger.place` places one replica and records its claim under the
  instance's key; :meth:`LiveLedger.claim` records a claim decided elsewhere
  (another server process, a restored instance);
- :meth:`LiveLedger.release` gives an instance's claim back (deleted, moved);
- :meth:`LiveLedger.put_worker`, :meth:`remove_worker`, :meth:`set_ready` follow
  the workers.

It keeps one Placer per distinct request (deployment, backend, parameters,
placement spec, model) and reuses it while the set of workers is unchanged;
each reused Placer refreshes only the workers whose claims changed since its
last call (the ledger's change log), so one placement costs
O(GPUs of the touched workers + log(workers)).

Pure and single-threaded: the caller serialises calls and decides when its
copy is current. Across server processes the database's ledger row lock stays
the arbiter: a server keeps a LiveLedger only while the database's
``claims_version`` is the one it last wrote, and rebuilds it otherwise (see
docs/placement.md, "One at a time").
"""

from __future__ import annotations

from collections.abc import Hashable

from gpufleet.core.estimation import estimate as default_estimator
from gpufleet.core.placement.cluster import ClaimSnapshot, ClusterSnapshot, WorkerSnapshot
from gpufleet.core.placement.engine import Placer
from gpufleet.core.placement.ledger import Ledger
from gpufleet.core.placement.reasons import Unplaceable
from gpufleet.core.placement.request import Estimator, PlacementRequest
from gpufleet.core.placement_spec import Placement

#: Placers kept for distinct requests (least recently used dropped first).
MAX_PLACERS = 256


def request_key(request: PlacementRequest) -> tuple[object, ...]:
    """What makes two requests place alike, except the model (compared separately)."""
    return (request.deployment, request.backend, request.backend_params, request.source,
            request.kv_cache_cpu_bytes, request.spec.model_dump_json())


class LiveLedger:
    """The cluster's claims, maintained incrementally; places one replica per call."""

    def __init__(self, cluster: ClusterSnapshot, estimator: Estimator = default_estimator) -> None:
        self.ledger = Ledger(ClusterSnapshot(workers=cluster.workers))
        self.estimator = estimator
        self.claims: dict[Hashable, ClaimSnapshot] = {}
        self._placers: dict[tuple[object, ...], Placer] = {}
        for i, c in enumerate(cluster.claims):
            self.claim(c.instance if c.instance is not None else ("snapshot", i), c)

    # ------------------------------------------------------------ placing

    def place(self, request: PlacementRequest, instance: Hashable) -> Placement | Unplaceable:
        """Place one replica and record its claim under ``instance`` (an instance id)."""
        if instance in self.claims:
            raise ValueError(f"instance {instance!r} already holds a claim; release it first")
        placer = self._placer(request)
        result = placer.place(instance if isinstance(instance, int) else None)
        if isinstance(result, Placement):
            # The Placer applied the claim to the ledger; remember it so it can be released.
            assert placer.last_claim is not None
            self.claims[instance] = placer.last_claim
        self._trim()
        return result

    def _placer(self, request: PlacementRequest) -> Placer:
        key = request_key(request)
        placer = self._placers.pop(key, None)
        if placer is not None and (placer.topology != self.ledger.topology
                                   or not _same_model(placer.request, request)):
            placer = None
        if placer is None:
            placer = Placer(self.ledger, request, self.estimator)
            if len(self._placers) >= MAX_PLACERS:
                self._placers.pop(next(iter(self._placers)))
        self._placers[key] = placer  # most recently used last
        return placer

    def _trim(self) -> None:
        """Keep the change log short: drop what every kept Placer has read."""
        log = self.ledger
        if len(log.log) > 4096:
            oldest = min((p._seen for p in self._placers.values()), default=log.log_end)
            log.trim_log(max(oldest, log.log_end - 4096))

    # ------------------------------------------------------------ claims

    def claim(self, instance: Hashable, claim: ClaimSnapshot) -> None:
        """Record a claim decided elsewhere (replacing the instance's earlier one)."""
        self.release(instance)
        self.claims[instance] = claim
        self.ledger.apply(claim)

    def release(self, instance: Hashable) -> ClaimSnapshot | None:
        """Give back the claim of an instance that was deleted or is being moved."""
        claim = self.claims.pop(instance, None)
        if claim is not None:
            self.ledger.release(claim)
        return claim

    # ------------------------------------------------------------ workers

    def put_worker(self, worker: WorkerSnapshot) -> None:
        """A worker registered or changed (GPUs, labels, reserved memory, readiness)."""
        held = [c for c in self.claims.values() if _involves(c, worker.name)]
        self.ledger.put_worker(worker, [_share_on(c, worker.name) for c in held])

    def remove_worker(self, name: str) -> None:
        self.ledger.remove_worker(name)

    def sync_workers(self, workers: list[WorkerSnapshot]) -> int:
        """Bring the workers in line with a fresh read of them (readiness from heartbeats,
        registrations): only what differs is applied — a readiness flip as
        :meth:`set_ready`, any other change as :meth:`put_worker`, a missing worker removed.
        Returns the number of workers changed (0: every kept Placer stays valid)."""
        changed = 0
        seen = set()
        for w in workers:
            seen.add(w.name)
            have = self.ledger.workers.get(w.name)
            if have is not None and have.snapshot is w:
                continue
            if have is not None and have.snapshot.model_copy(update={"ready": w.ready}) == w:
                if have.ready != w.ready:
                    self.set_ready(w.name, w.ready)
                    changed += 1
                continue
            self.put_worker(w)
            changed += 1
        for name in [n for n in self.ledger.workers if n not in seen]:
            self.remove_worker(name)
            changed += 1
        return changed

    def set_ready(self, name: str, ready: bool) -> None:
        self.ledger.set_ready(name, ready)

    def snapshot(self) -> ClusterSnapshot:
        """The cluster as this ledger holds it (for checks and `gpufleet cluster snapshot`)."""
        return ClusterSnapshot(workers=[w.snapshot for w in self.ledger.ordered()],
                               claims=list(self.claims.values()))


def _same_model(a: PlacementRequest, b: PlacementRequest) -> bool:
    return a.metadata is b.metadata or a.metadata == b.metadata


def _involves(claim: ClaimSnapshot, worker: str) -> bool:
    return claim.worker == worker or any(p.worker == worker for p in claim.parts)


def _share_on(claim: ClaimSnapshot, worker: str) -> ClaimSnapshot:
    """The part of a claim that sits on ``worker``, as a claim of its own (for re-applying
    the claims of a replaced worker without touching the others)."""
    if claim.worker == worker:
        return claim.model_copy(update={"parts": []})
    part = next(p for p in claim.parts if p.worker == worker)
    return ClaimSnapshot.model_construct(deployment=claim.deployment, instance=claim.instance, source=claim.source,
                                         worker=worker, gpu_indexes=[], vram_claim=part.vram_claim,
                                         ram_claim=part.ram_claim, exclusive=claim.exclusive, parts=[])
