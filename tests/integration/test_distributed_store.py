"""Distributed instances in the store, on SQLite and PostgreSQL: placed only over workers
that report llama.cpp RPC, the claims on every worker, the RPC servers a part worker
reports (and what is refused), and which instances a part worker is told about."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from gpufleet.core.estimation.summary import summarize
from gpufleet.core.schemas import (
    RPC_CAPABILITY,
    DeploymentSpec,
    GpuInfo,
    ModelSource,
    RpcServerInfo,
    WorkerRegistration,
)
from gpufleet.core.states import InstanceState
from gpufleet.store import plan_apply, repository as repo
from gpufleet.store.db import make_engine, migrate, session_factory
from gpufleet.store.ledger import cluster_snapshot
from gpufleet.store.models import InstanceRow
from tests.support.gguf_shapes import synthetic_metadata

GiB = 1 << 30
TIMEOUT = timedelta(seconds=60)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def register(s: Session, name: str, rpc: bool) -> None:
    repo.register_worker(s, WorkerRegistration(
        name=name, address="http://127.0.0.1:1", cpu_count=8, memory_total=64 * GiB, work_queue=f"node-{name}",
        gpus=[GpuInfo(index=0, name="RTX4090-24G", memory_total=24 * GiB)],
        capabilities=[RPC_CAPABILITY] if rpc else []))


def place_big(sessions: sessionmaker[Session]) -> InstanceRow:
    """Llama-3-70B Q4_K_M (~40 GiB) with --distributed: more than one 24 GiB card, so
    it needs both workers' cards."""
    meta = synthetic_metadata()
    spec = DeploymentSpec(name="big", replicas=1, source=ModelSource(local_path="/models/70b.gguf"),
                          placement={"distributed": True})
    with sessions.begin() as s:
        repo.create_deployment(s, spec, meta, summarize(meta, "llama.cpp"))
    with sessions.begin() as s:
        [iid] = plan_apply.create_missing(s, "big")
        [row] = repo.place_instances(s, [iid], TIMEOUT)
        s.expunge(row)
    return row


def test_distributed_instance_is_placed_over_rpc_workers_and_claims_on_both(
        sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        register(s, "node-a", rpc=True)
        register(s, "node-b", rpc=True)
    row = place_big(sessions)
    assert row.state == InstanceState.SCHEDULED and row.placement is not None
    main, parts = row.placement["worker"], row.placement["parts"]
    assert {main, *(p["worker"] for p in parts)} == {"node-a", "node-b"}
    with sessions.begin() as s:
        [claim] = cluster_snapshot(s, TIMEOUT).claims
        claimed = sum(claim.vram_claim.values()) + sum(sum(p.vram_claim.values()) for p in claim.parts)
        assert claimed > 24 * GiB  # more than one card holds: the claim is on both
        part_worker = parts[0]["worker"]
        # the part worker is told about the instance (its agent must not stop the RPC servers)
        assert [i.id for i in repo.list_instances(s, worker=part_worker)] == [row.id]
        assert [i.id for i in repo.list_instances(s, worker=main)] == [row.id]


def test_distributed_needs_rpc_on_two_workers(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        register(s, "node-a", rpc=True)
        register(s, "node-b", rpc=False)
    row = place_big(sessions)
    assert row.placement is None and row.state == InstanceState.PENDING
    assert "--distributed needs two or more workers that run llama.cpp RPC; node-b cannot" in row.state_message
    assert "scripts/build-llama-cpp.sh" in row.state_message
    with sessions.begin() as s:
        assert cluster_snapshot(s, TIMEOUT).claims == []


def test_rpc_servers_reported_by_the_part_worker_only(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        register(s, "node-a", rpc=True)
        register(s, "node-b", rpc=True)
    row = place_big(sessions)
    main, part = row.placement["worker"], row.placement["parts"][0]  # type: ignore[index]
    gpu = part["gpu_indexes"][0]
    server = RpcServerInfo(worker=part["worker"], gpu_index=gpu, host="10.0.0.2", port=50052, pid=7)
    refused = [
        (main, [server.model_copy(update={"worker": main})], "has no RPC part on worker"),
        (part["worker"], [server.model_copy(update={"gpu_index": gpu + 5})], "is not part of instance"),
        (part["worker"], [server.model_copy(update={"worker": main})], "is not part of instance"),
    ]
    for worker, servers, message in refused:
        with pytest.raises(repo.Conflict, match=message), sessions.begin() as s:
            repo.report_rpc_servers(s, row.id, worker, servers)
    with sessions.begin() as s:  # nothing written by the refusals
        assert repo.get_instance(s, row.id).rpc_servers == []
    with sessions.begin() as s:
        repo.report_rpc_servers(s, row.id, part["worker"], [server])
    with sessions.begin() as s:
        assert repo.get_instance(s, row.id).rpc_servers == [server]
    moved = server.model_copy(update={"port": 50060, "pid": 8})
    with sessions.begin() as s:  # a restart replaces that worker's servers
        repo.report_rpc_servers(s, row.id, part["worker"], [moved])
    with sessions.begin() as s:
        assert repo.get_instance(s, row.id).rpc_servers == [moved]
