"""The repository on real databases: SQLite (default) and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from gpufleet.core.estimate import estimate_llama_cpp
from gpufleet.core.schemas import (
    DeploymentEdit,
    DeploymentSpec,
    GpuInfo,
    InstanceStateUpdate,
    ModelSource,
    WorkerRegistration,
)
from gpufleet.core.states import InstanceState, InvalidTransition
from gpufleet.sources import read_local_metadata
from gpufleet.store import repository as repo
from gpufleet.store.db import make_engine, migrate, session_factory

GiB = 1 << 30
TIMEOUT = timedelta(seconds=60)


@pytest.fixture
def sessions(database_url: str):  # noqa: ANN201
    engine = make_engine(database_url)
    migrate(engine)
    migrate(engine)  # idempotent
    yield session_factory(engine)
    engine.dispose()


def spec(path: Path, name: str = "tiny", replicas: int = 2, params: list[str] | None = None) -> DeploymentSpec:
    return DeploymentSpec(name=name, replicas=replicas, backend_params=params or [],
                          source=ModelSource(kind="local_path", local_path=str(path)))


def create(sessions, tiny_gguf: Path, **kw) -> None:  # noqa: ANN001
    s = spec(tiny_gguf, **kw)
    _, meta = read_local_metadata(str(tiny_gguf))
    with sessions.begin() as session:
        repo.create_deployment(session, s, meta, estimate_llama_cpp(meta))


def register(sessions, name: str, gpus: list[GpuInfo] | None = None, ram: int = 16 * GiB) -> None:  # noqa: ANN001
    with sessions.begin() as session:
        repo.register_worker(session, WorkerRegistration(
            name=name, address="http://127.0.0.1:1", gpus=gpus or [], cpu_count=2, memory_total=ram,
            work_queue=f"node-{name}"))


def test_create_and_duplicate(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf)
    with pytest.raises(repo.Conflict, match="already exists"):
        create(sessions, tiny_gguf)
    with sessions.begin() as session:
        deps = repo.list_deployments(session)
    assert [d.name for d in deps] == ["tiny"]
    assert deps[0].metadata is not None and deps[0].metadata.architecture == "llama"


def test_unknown_deployment(sessions) -> None:  # noqa: ANN001
    with sessions.begin() as session, pytest.raises(repo.NotFound, match="deployment 'nope' not found"):
        repo.get_deployment(session, "nope")


def test_reconcile_creates_and_removes(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=2)
    with sessions.begin() as session:
        plan = repo.reconcile_replicas(session, "tiny")
    assert len(plan.created) == 2 and plan.to_place == plan.created and plan.removing == []
    with sessions.begin() as session:  # converged: nothing to do
        again = repo.reconcile_replicas(session, "tiny")
    assert again.created == [] and again.to_place == plan.created
    with sessions.begin() as session:
        repo.set_replicas(session, "tiny", 1)
        down = repo.reconcile_replicas(session, "tiny")
    assert down.removing == [max(plan.created)]  # newest of two PENDING goes first


def test_edit_applies_to_new_instances_only(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        first = repo.reconcile_replicas(session, "tiny").created[0]
        repo.edit_deployment(session, "tiny", DeploymentEdit(backend_params=["--ctx-size=256"]))
        repo.set_replicas(session, "tiny", 2)
        second = repo.reconcile_replicas(session, "tiny").created[0]
    with sessions.begin() as session:
        assert repo.get_instance(session, first).config.backend_params == []
        assert repo.get_instance(session, second).config.backend_params == ["--ctx-size=256"]
        assert repo.get_deployment(session, "tiny").generation == 2


def test_state_transitions_enforced(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        iid = repo.reconcile_replicas(session, "tiny").created[0]
    with sessions.begin() as session, pytest.raises(InvalidTransition):
        repo.update_instance_state(session, iid, InstanceStateUpdate(state=InstanceState.RUNNING))
    with sessions.begin() as session:
        row = repo.update_instance_state(session, iid, InstanceStateUpdate(state=InstanceState.ERROR, message="boom"))
        assert (row.state, row.state_message) == (InstanceState.ERROR, "boom")


def test_placement_claims_and_release(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    """One 1 GiB GPU; each replica claims est.gpu_vram ≈ 258 MiB: floor(1024/258) = 3 on the GPU,
    the 4th goes to the CPU worker; deleting one GPU instance frees room for the next."""
    register(sessions, "a")
    register(sessions, "b", [GpuInfo(index=0, name="T4-1G", memory_total=GiB, virtual=True)])
    create(sessions, tiny_gguf, replicas=4)
    with sessions.begin() as session:
        ids = repo.reconcile_replicas(session, "tiny").created
        est = repo.get_deployment(session, "tiny").estimate
    placed = []
    for iid in ids:
        with sessions.begin() as session:
            row = repo.place_instance(session, iid, est, TIMEOUT)
            placed.append((row.worker_name, (row.placement or {}).get("gpu_indexes")))
    assert placed == [("b", [0]), ("b", [0]), ("b", [0]), ("a", [])]
    with sessions.begin() as session:
        snap = {w.name: w for w in repo.cluster_snapshot(session, TIMEOUT)}
    assert snap["b"].gpus[0].claimed == 3 * est.gpu_vram <= GiB
    with sessions.begin() as session:
        repo.delete_instance_row(session, ids[0])
    with sessions.begin() as session:
        snap = {w.name: w for w in repo.cluster_snapshot(session, TIMEOUT)}
    assert snap["b"].gpus[0].claimed == 2 * est.gpu_vram


def test_unplaceable_stays_pending_with_reason(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        iid = repo.reconcile_replicas(session, "tiny").created[0]
        est = repo.get_deployment(session, "tiny").estimate
        row = repo.place_instance(session, iid, est, TIMEOUT)
    assert row.state == InstanceState.PENDING
    assert "no workers registered" in row.state_message


def test_delete_deployment_needs_no_instances(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        iid = repo.reconcile_replicas(session, "tiny").created[0]
    with sessions.begin() as session, pytest.raises(repo.Conflict, match="still has instances"):
        repo.delete_deployment_row(session, "tiny")
    with sessions.begin() as session:
        repo.delete_instance_row(session, iid)
        repo.delete_deployment_row(session, "tiny")
    with sessions.begin() as session:
        assert repo.list_deployments(session) == []


def test_ids_are_never_reused(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    """Instance ids name log files and flow-run keys: a new instance must not inherit an old id."""
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        first = repo.reconcile_replicas(session, "tiny").created[0]
    with sessions.begin() as session:
        repo.delete_instance_row(session, first)
    with sessions.begin() as session:
        second = repo.reconcile_replicas(session, "tiny").created[0]
    assert second > first
