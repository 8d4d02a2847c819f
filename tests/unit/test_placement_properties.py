"""Invariants of placement on random clusters and requests (hypothesis):

- no over-commit: on every GPU, claims ≤ total − reserved; on every worker, RAM claims ≤ RAM − reserved
  (counting the claims the cluster started with);
- selectors respected: every placement is on a ready worker whose labels match;
- manual selection respected: only selected GPUs, disjoint between replicas unless --overcommit;
- every unplaced replica has a reason for every worker.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.core.placement import ClaimSnapshot, ClusterSnapshot, GpuSnapshot, Unplaceable, WorkerSnapshot, plan
from gpufleet.core.placement_spec import Placement
from gpufleet.core.selectors import WorkerSelector
from tests.unit.test_placement import linear_estimator, model, req

GiB = 1 << 30
SIZES = (8, 16, 24, 48, 80)


@st.composite
def clusters(draw: st.DrawFn) -> ClusterSnapshot:
    workers, claims = [], []
    for i in range(draw(st.integers(0, 5))):
        name = f"w{i}"
        gpus = [GpuSnapshot(index=j, name="G", memory_total=draw(st.sampled_from(SIZES)) * GiB,
                            reserved=draw(st.sampled_from((0, GiB // 2))),
                            used_outside=draw(st.sampled_from((0, 0, GiB, 5 * GiB))),
                            vendor="apple" if draw(st.booleans()) and j == 0 and i == 4 else "nvidia",
                            unified_memory=i == 4 and j == 0)
                for j in range(draw(st.integers(0, 4)))]
        workers.append(WorkerSnapshot(
            name=name, ready=draw(st.booleans()) or i == 0, memory_total=draw(st.sampled_from((8, 32, 128))) * GiB,
            ram_reserved=draw(st.sampled_from((0, GiB))), gpus=gpus,
            labels={"zone": draw(st.sampled_from(("a", "b"))), **({"fast": "1"} if draw(st.booleans()) else {})}))
        w = workers[-1]
        for g in gpus:
            if draw(st.booleans()):
                # a valid starting ledger: a claim on unified memory also fits the worker's RAM
                room = max(g.memory_total - g.reserved - g.used_outside, 0) // 2
                if g.unified_memory:
                    room = min(room, (w.memory_total - w.ram_reserved) // 2)
                claims.append(ClaimSnapshot(deployment="other", worker=name, gpu_indexes=[g.index],
                                            vram_claim={g.index: draw(st.integers(0, room))}))
    return ClusterSnapshot(workers=workers, claims=claims)


@st.composite
def requests(draw: st.DrawFn, cluster: ClusterSnapshot):  # noqa: ANN201
    meta = model(draw(st.integers(1, 80)), draw(st.sampled_from((0.05, 0.25, 0.5, 1.0))))
    spec: dict = {"strategy": draw(st.sampled_from(("spread", "binpack")))}
    if draw(st.booleans()):
        spec["worker_selector"] = [draw(st.sampled_from(("zone=a", "zone in (a,b)", "fast", "!fast", "zone!=b")))]
    all_gpus = [f"{w.name}:{g.index}" for w in cluster.workers for g in w.gpus]
    if all_gpus and draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(all_gpus), min_size=1, max_size=len(all_gpus), unique=True))
        spec["gpu_selector"] = chosen
        if draw(st.booleans()):
            spec["gpus_per_replica"] = draw(st.integers(1, len(chosen)))
        spec["overcommit"] = draw(st.booleans())
    spec["cpu_offloading"] = draw(st.booleans())
    spec["distributed"] = draw(st.booleans())
    backend = draw(st.sampled_from(("llama.cpp", "llama.cpp", "vllm")))
    if backend == "vllm":
        spec["cpu_offloading"] = spec["distributed"] = False
    return req(meta, backend=backend, **spec)


def _shares(p: Placement) -> list[tuple[str, dict[int, int], int]]:
    return [(p.worker, p.vram_claim, p.ram_claim)] + [(x.worker, x.vram_claim, x.ram_claim) for x in p.parts]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_placement_invariants(data: st.DataObject) -> None:
    cluster = data.draw(clusters())
    request = data.draw(requests(cluster))
    replicas = data.draw(st.integers(1, 8))
    results = plan(cluster, request, replicas, linear_estimator)
    assert len(results) == replicas

    workers = {w.name: w for w in cluster.workers}
    vram: dict[tuple[str, int], int] = defaultdict(int)
    ram: dict[str, int] = defaultdict(int)
    for c in cluster.claims:
        for i, amount in c.vram_claim.items():
            vram[(c.worker, i)] += amount
            if any(g.index == i and g.unified_memory for g in workers[c.worker].gpus):
                ram[c.worker] += amount
    selector = WorkerSelector.parse(request.spec.worker_selector)
    manual = set(request.spec.gpu_selector)
    used_manual: list[set[str]] = []
    for r in results:
        if isinstance(r, Unplaceable):
            assert set(r.reasons) == set(workers), "every worker needs a reason"
            assert all(r.reasons.values())
            continue
        for name, claims, ram_claim in _shares(r):
            w = workers[name]
            assert w.ready and selector.mismatch(w.labels) is None
            ram[name] += ram_claim
            for i, amount in claims.items():
                vram[(name, i)] += amount
                g = next(g for g in w.gpus if g.index == i)
                if g.unified_memory:
                    ram[name] += amount
        gpus = {f"{r.worker}:{i}" for i in r.gpu_indexes} | {f"{x.worker}:{i}" for x in r.parts for i in x.gpu_indexes}
        if manual:
            assert gpus <= manual
            if not request.spec.overcommit:
                assert all(not (gpus & earlier) for earlier in used_manual), "manual GPUs shared without --overcommit"
            used_manual.append(gpus)
        if request.spec.gpus_per_replica and r.estimate_known and r.stage != "cpu":
            assert len(gpus) == request.spec.gpus_per_replica or r.stage == "offload"
    for w in cluster.workers:
        for g in w.gpus:
            assert vram[(w.name, g.index)] <= g.memory_total - g.reserved - g.used_outside, \
                f"{w.name}:{g.index} over-committed (memory used outside gpufleet counts)"
        assert ram[w.name] <= w.memory_total - w.ram_reserved, f"{w.name} RAM over-committed"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_interleaved_deployments_on_one_ledger_never_overcommit(data: st.DataObject) -> None:
    """Several deployments placed in turn against one ledger (as a batch placement does)."""
    from gpufleet.core.placement import Ledger, Placer

    cluster = data.draw(clusters())
    ledger = Ledger(cluster)
    placers = [Placer(ledger, data.draw(requests(cluster)).__class__(**{**vars(data.draw(requests(cluster))),
                                                                        "deployment": f"d{i}"}), linear_estimator)
               for i in range(3)]
    results = [placers[i].place() for i in data.draw(st.lists(st.integers(0, 2), min_size=1, max_size=12))]
    vram: dict[tuple[str, int], int] = defaultdict(int)
    for c in cluster.claims:
        for i, amount in c.vram_claim.items():
            vram[(c.worker, i)] += amount
    for r in results:
        if isinstance(r, Placement):
            for name, claims, _ in _shares(r):
                for i, amount in claims.items():
                    vram[(name, i)] += amount
    for w in cluster.workers:
        for g in w.gpus:
            assert vram[(w.name, g.index)] <= g.memory_total - g.reserved - g.used_outside
            assert ledger.workers[w.name].gpu(g.index).free == g.memory_total - g.reserved - g.used_outside - vram[(w.name, g.index)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_heap_fast_path_equals_a_full_rescan(data: st.DataObject) -> None:
    """The single-GPU heap gives the same placements as scoring every worker again each time."""
    from gpufleet.core.placement import Placer
    from gpufleet.core.placement.fit import Candidate, single_gpu

    cluster = data.draw(clusters())
    request = data.draw(requests(cluster))
    replicas = data.draw(st.integers(1, 10))
    fast = Placer(cluster, request, linear_estimator).plan(replicas)

    slow_placer = Placer(cluster, request, linear_estimator)
    slow: list = []
    for _ in range(replicas):
        if slow_placer._unknown_estimate() is not None:
            slow.append(slow_placer.place())
            continue
        cands = [c for w in slow_placer.eligible
                 if isinstance(c := single_gpu(w, slow_placer.usable(w), slow_placer.fit, request.spec.strategy),
                               Candidate)]
        if cands:
            slow.append(slow_placer._commit(*slow_placer._pick(cands)))
        else:
            slow.append(slow_placer.place())  # later stages: the same code path on both sides
    assert [(p.worker, p.gpu_indexes) if isinstance(p, Placement) else None for p in fast] == \
           [(p.worker, p.gpu_indexes) if isinstance(p, Placement) else None for p in slow]
