"""A placement across workers is shown by the dry run but not recorded: nodes start no
llama.cpp RPC servers yet, so such an instance stays PENDING and says why."""

from __future__ import annotations

from datetime import timedelta

from gpufleet.core.estimation.summary import summarize
from gpufleet.core.schemas import DeploymentSpec, GpuInfo, ModelSource, WorkerRegistration
from gpufleet.core.states import InstanceState
from gpufleet.store import repository as repo
from gpufleet.store.db import make_engine, migrate, session_factory
from gpufleet.store.ledger import cluster_snapshot, plan_spec
from tests.support.gguf_shapes import synthetic_metadata

GiB = 1 << 30
TIMEOUT = timedelta(seconds=60)


def test_distributed_instance_waits_with_a_reason(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    sessions = session_factory(engine)
    meta = synthetic_metadata()  # Llama-3-70B Q4_K_M: ~40 GiB, more than one 24 GiB card
    spec = DeploymentSpec(name="big", replicas=1, source=ModelSource(local_path="/models/70b.gguf"),
                          placement={"distributed": True})
    with sessions.begin() as s:
        for name in ("node-a", "node-b"):
            repo.register_worker(s, WorkerRegistration(
                name=name, address="http://127.0.0.1:1", cpu_count=8, memory_total=64 * GiB,
                work_queue=f"node-{name}",
                gpus=[GpuInfo(index=i, name="RTX4090-24G", memory_total=24 * GiB) for i in range(1)]))
        repo.create_deployment(s, spec, meta, summarize(meta, "llama.cpp"))
    with sessions.begin() as s:
        [dry] = plan_spec(s, spec, meta, TIMEOUT).replicas
    # the dry run finds it: 20 GiB-ish on each worker's card
    assert dry.placement is not None and dry.placement.parts, dry
    with sessions.begin() as s:
        [iid] = repo.reconcile_replicas(s, "big").to_place
        [row] = repo.place_instances(s, [iid], TIMEOUT)
        assert row.placement is None and row.state == InstanceState.PENDING
        assert "node-a + node-b together" in row.state_message
        assert "cannot start distributed (llama.cpp RPC) instances yet" in row.state_message
    with sessions.begin() as s:  # nothing claimed
        assert cluster_snapshot(s, TIMEOUT).claims == []
    engine.dispose()
