"""No over-commit under concurrency, on a real database (SQLite and PostgreSQL).

Two server states on the same database stand for two gpufleet server processes:
each has its own engine, connection pool and in-process placement lock, so only
the database's ledger lock (gpufleet.store.ledger.lock_ledger) keeps them apart.
50 instances of 5 deployments are placed at once — 30 by single calls and 20 in
4 batch calls, alternating between the two "servers" — onto 2 GPUs that hold
exactly 5 replicas each (card = 5.5 × claim).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.core.schemas import DeploymentSpec, GpuInfo, ModelSource, ResourceEstimate, WorkerRegistration
from gpufleet.core.states import InstanceState
from gpufleet.server.app import ServerState
from gpufleet.sources import read_local_metadata
from gpufleet.store import plan_apply, repository as repo

GiB = 1 << 30
TIMEOUT = timedelta(seconds=60)


def no_trigger(operation: str, parameters: dict) -> str:
    return ""  # placement is called directly here; no flows run


def test_fifty_concurrent_placements_never_overcommit(database_url: str, tiny_gguf: Path) -> None:
    _, meta = read_local_metadata(str(tiny_gguf))
    probe = estimate(meta, EstimateOptions(gpu_memory=(8 * GiB,)))
    claim = probe.claims[0]
    card = claim * 11 // 2  # 5.5 claims: exactly 5 fit
    servers = [ServerState(database_url, no_trigger), ServerState(database_url, no_trigger)]
    a = servers[0]
    try:
        with a.session() as s:
            repo.register_worker(s, WorkerRegistration(
                name="gpu", address="http://127.0.0.1:1", cpu_count=8, memory_total=64 * GiB, work_queue="node-gpu",
                gpus=[GpuInfo(index=i, name="V", memory_total=card, virtual=True) for i in range(2)]))
            repo.register_worker(s, WorkerRegistration(
                name="cpu", address="http://127.0.0.1:1", cpu_count=8, memory_total=64 * GiB, work_queue="node-cpu"))
            ids = []
            for d in range(5):
                spec = DeploymentSpec(name=f"d{d}", replicas=10, source=ModelSource(local_path=str(tiny_gguf)))
                repo.create_deployment(s, spec, meta, ResourceEstimate.unknown("unused"))
                ids += plan_apply.create_missing(s, spec.name)
        assert len(ids) == 50

        def place(i_and_id: tuple[int, int]) -> str:
            i, iid = i_and_id
            state = servers[i % 2]
            with state.placement_lock, state.session() as s:
                return repo.place_instance(s, iid, TIMEOUT).state

        def place_batch(i_and_ids: tuple[int, list[int]]) -> list[str]:
            i, batch = i_and_ids
            state = servers[i % 2]
            with state.placement_lock, state.session() as s:
                return [r.state for r in repo.place_instances(s, batch, TIMEOUT)]

        singles, batches = ids[:30], [ids[i:i + 5] for i in range(30, 50, 5)]  # 30 calls + 4 batches of 5
        with ThreadPoolExecutor(max_workers=34) as pool:
            one = pool.map(place, enumerate(singles))
            many = pool.map(place_batch, enumerate(batches))
            states = list(one) + [st for group in many for st in group]
        assert states == [InstanceState.SCHEDULED] * 50

        with a.session() as s:
            snap = repo.cluster_snapshot(s, TIMEOUT)
        per_gpu: Counter[int] = Counter()
        for c in snap.claims:
            for index, amount in c.vram_claim.items():
                per_gpu[index] += amount
        assert per_gpu[0] <= card and per_gpu[1] <= card
        # Not only safe but complete: every GPU slot was used, the other 40 run on CPUs.
        assert sorted(per_gpu.values()) == [5 * claim, 5 * claim]
        assert len(snap.claims) == 50 and sum(1 for c in snap.claims if c.vram_claim) == 10
    finally:
        for state in servers:
            state.engine.dispose()
