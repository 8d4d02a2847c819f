"""The repository on real databases: SQLite (default) and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from gpufleet.core.estimation.summary import summarize
from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.core.schemas import (
    DeploymentEdit,
    DeploymentSpec,
    GpuInfo,
    InstanceStateUpdate,
    ModelSource,
    ResourceEstimate,
    WorkerRegistration,
)
from gpufleet.core.states import InstanceState, InvalidTransition
from gpufleet.sources import read_local_metadata
from gpufleet.store import plan_apply, repository as repo
from gpufleet.store.db import make_engine, migrate, session_factory
from gpufleet.store.models import InstanceRow

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
        repo.create_deployment(session, s, meta, summarize(meta, "llama.cpp"))


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


def test_edit_applies_to_new_instances_only(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        first = plan_apply.create_missing(session, "tiny")[0]
        repo.edit_deployment(session, "tiny", DeploymentEdit(backend_params=["--ctx-size=256"]))
        repo.set_replicas(session, "tiny", 2)
        second = plan_apply.create_missing(session, "tiny")[0]
    with sessions.begin() as session:
        assert repo.get_instance(session, first).config.backend_params == []
        assert repo.get_instance(session, second).config.backend_params == ["--ctx-size=256"]
        assert repo.get_deployment(session, "tiny").generation == 2


def test_state_transitions_enforced(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        iid = plan_apply.create_missing(session, "tiny")[0]
    with sessions.begin() as session, pytest.raises(InvalidTransition):
        repo.update_instance_state(session, iid, InstanceStateUpdate(state=InstanceState.RUNNING))
    with sessions.begin() as session:
        row = repo.update_instance_state(session, iid, InstanceStateUpdate(state=InstanceState.ERROR, message="boom"))
        assert (row.state, row.state_message) == (InstanceState.ERROR, "boom")


def tiny_claim(tiny_gguf: Path, card: int = GiB) -> int:
    """What one tiny replica claims on one GPU of ``card`` bytes, from the real estimator."""
    _, meta = read_local_metadata(str(tiny_gguf))
    return estimate(meta, EstimateOptions(gpu_memory=(card,))).claims[0]


def test_placement_claims_and_release(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    """One 1 GiB GPU; each replica claims c (the real estimate): floor(1 GiB / c) fit on the GPU,
    the next goes to the CPU worker; deleting one GPU instance frees room for the next."""
    register(sessions, "a")
    register(sessions, "b", [GpuInfo(index=0, name="T4-1G", memory_total=GiB, virtual=True)])
    claim = tiny_claim(tiny_gguf)
    fit = GiB // claim
    create(sessions, tiny_gguf, replicas=fit + 1)
    with sessions.begin() as session:
        ids = plan_apply.create_missing(session, "tiny")
    placed = []
    for iid in ids:
        with sessions.begin() as session:
            row = repo.place_instance(session, iid, TIMEOUT)
            placed.append((row.worker_name, (row.placement or {}).get("gpu_indexes")))
    assert placed == [("b", [0])] * fit + [("a", [])]
    with sessions.begin() as session:
        snap = repo.cluster_snapshot(session, TIMEOUT)
    on_gpu = [c for c in snap.claims if c.worker == "b"]
    assert sum(c.vram_claim[0] for c in on_gpu) == fit * claim <= GiB
    with sessions.begin() as session:
        version = repo.claims_version(session)
        repo.delete_instance_row(session, ids[0])
    with sessions.begin() as session:
        snap = repo.cluster_snapshot(session, TIMEOUT)
        assert repo.claims_version(session) == version + 1  # a release is a cluster change
    assert sum(c.vram_claim[0] for c in snap.claims if c.worker == "b") == (fit - 1) * claim


def test_reserved_memory_is_left_free(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    """A GPU of 1 GiB with (1 GiB − c + 1) reserved has c − 1 bytes free: the replica fits no GPU, and
    without --cpu-offloading a GPU worker's CPU is not used (issue 12), so it stays PENDING."""
    claim = tiny_claim(tiny_gguf)
    with sessions.begin() as session:
        repo.register_worker(session, WorkerRegistration(
            name="g", address="http://127.0.0.1:1", cpu_count=2, memory_total=16 * GiB, work_queue="node-g",
            gpus=[GpuInfo(index=0, name="T4-1G", memory_total=GiB, virtual=True)],
            vram_reserved=GiB - claim + 1, ram_reserved=GiB))
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        iid = plan_apply.create_missing(session, "tiny")[0]
        row = repo.place_instance(session, iid, TIMEOUT)
        assert row.placement is None and row.state == InstanceState.PENDING
        assert "largest free" in row.state_message and "not on its CPU" in row.state_message
        [w] = repo.cluster_snapshot(session, TIMEOUT).workers
        assert (w.ram_reserved, w.gpus[0].reserved) == (GiB, GiB - claim + 1)
        [view] = repo.list_workers(session, TIMEOUT)
        assert view.vram_reserved == GiB - claim + 1


def test_unknown_metadata_still_places(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    register(sessions, "a")
    with sessions.begin() as session:
        repo.create_deployment(session, spec(tiny_gguf), None, ResourceEstimate.unknown("not readable"))
        iid = plan_apply.create_missing(session, "tiny")[0]
        row = repo.place_instance(session, iid, TIMEOUT)
    assert row.state == InstanceState.SCHEDULED and row.worker_name == "a"
    assert "estimate unknown" in row.state_message and "nothing claimed" in row.state_message


def test_plan_is_a_dry_run_of_all_replicas(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    register(sessions, "a")
    register(sessions, "b", [GpuInfo(index=0, name="T4-1G", memory_total=GiB, virtual=True)])
    fit = GiB // tiny_claim(tiny_gguf)
    _, meta = read_local_metadata(str(tiny_gguf))
    with sessions.begin() as session:
        result = repo.plan_spec(session, spec(tiny_gguf, replicas=fit + 2), meta, TIMEOUT)
    assert [r.placement.worker for r in result.replicas if r.placement] == ["b"] * fit + ["a", "a"]
    with sessions.begin() as session:
        assert repo.cluster_snapshot(session, TIMEOUT).claims == []  # nothing written


def test_scale_down_removes_offloaded_before_full_gpu(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    register(sessions, "a")
    create(sessions, tiny_gguf, replicas=2)
    with sessions.begin() as session:
        first, second = plan_apply.create_missing(session, "tiny")
        for iid in (first, second):
            repo.place_instance(session, iid, TIMEOUT)
        session.get(InstanceRow, first).placement = {**session.get(InstanceRow, first).placement, "offloaded": True}
        repo.set_replicas(session, "tiny", 1)
        applied = plan_apply.apply_plan(session, "tiny", TIMEOUT)
    assert [(a.kind, a.instance) for a in applied.node_actions] == [("stop", first)]  # older, but partially offloaded


def test_unplaceable_stays_pending_with_reason(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        iid = plan_apply.create_missing(session, "tiny")[0]
        row = repo.place_instance(session, iid, TIMEOUT)
    assert row.state == InstanceState.PENDING
    assert "no workers registered" in row.state_message


def test_delete_deployment_needs_no_instances(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as session:
        iid = plan_apply.create_missing(session, "tiny")[0]
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
        first = plan_apply.create_missing(session, "tiny")[0]
    with sessions.begin() as session:
        repo.delete_instance_row(session, first)
    with sessions.begin() as session:
        second = plan_apply.create_missing(session, "tiny")[0]
    assert second > first


def test_controller_replaces_pending_when_the_cluster_changes(database_url: str, tiny_gguf: Path) -> None:
    """Event-driven: an instance that did not fit is re-placed (a `reconcile` run) in the first
    controller round after a worker joins — and not while nothing changes."""
    from gpufleet.server.app import ServerState
    from gpufleet.server.controller import Controller

    calls: list[tuple[str, dict]] = []
    state = ServerState(database_url, lambda op, params: calls.append((op, params)) or "run")
    controller = Controller(state, state.trigger)
    try:
        _, meta = read_local_metadata(str(tiny_gguf))
        with state.session() as s:
            repo.create_deployment(s, spec(tiny_gguf, replicas=1), meta, summarize(meta, "llama.cpp"))
            iid = plan_apply.create_missing(s, "tiny")[0]
        with state.session() as s:
            row = repo.place_instance(s, iid, TIMEOUT)
            assert row.state == InstanceState.PENDING and "no workers registered" in row.state_message
        controller.run_once()  # first round: learns the cluster
        controller.run_once()  # nothing changed
        assert calls == []
        with state.session() as s:
            repo.register_worker(s, WorkerRegistration(
                name="late", address="http://127.0.0.1:1", cpu_count=2, memory_total=16 * GiB, work_queue="node-late"))
        controller.run_once()
        assert calls == [("reconcile", {"name": "tiny"})]
    finally:
        state.engine.dispose()


def test_worker_engines_and_runtime_round_trip(sessions) -> None:  # noqa: ANN001
    """What a node reports it can run is stored and returned as reported: the server refuses
    uninstalled `--backend-version`s from this, and `gpufleet workers` shows it."""
    from gpufleet.core.schemas import EngineInstall

    llama = EngineInstall(engine="llama.cpp", version="b11434", devices=["cpu", "cuda"],
                          location="/opt/llama/bin/llama-server", default=True)
    vllm = EngineInstall(engine="vllm", version="0.32.0", devices=["cpu"], location="/engines/vllm-0.32.0-cpu",
                         default=True)
    with sessions.begin() as session:
        repo.register_worker(session, WorkerRegistration(
            name="w", address="http://127.0.0.1:1", cpu_count=2, memory_total=GiB, work_queue="node-w",
            engines=[llama], runtime="docker"))
    with sessions.begin() as session:
        (view,) = repo.list_workers(session, TIMEOUT)
    assert view.engines == [llama] and view.runtime == "docker"

    with sessions.begin() as session:  # after a `backends install` run: replaced, heartbeat untouched
        beat = repo.get_worker(session, "w").last_heartbeat
        repo.set_worker_engines(session, "w", [llama, vllm])
    with sessions.begin() as session:
        (view,) = repo.list_workers(session, TIMEOUT)
        assert repo.get_worker(session, "w").last_heartbeat == beat
    assert view.engines == [llama, vllm] and view.runtime == "docker"

    with sessions.begin() as session:  # a re-registration is the node's whole truth again
        repo.register_worker(session, WorkerRegistration(
            name="w", address="http://127.0.0.1:1", cpu_count=2, memory_total=GiB, work_queue="node-w"))
    with sessions.begin() as session:
        (view,) = repo.list_workers(session, TIMEOUT)
    assert view.engines == [] and view.runtime == "process"

    with sessions.begin() as session, pytest.raises(repo.NotFound, match="worker 'ghost' is not registered"):
        repo.set_worker_engines(session, "ghost", [llama])


def test_migration_0004_gives_existing_workers_defaults(database_url: str) -> None:
    """A database of revision 0003 with a registered worker upgrades in place: the worker
    reports no engines yet (until it registers again) and runs processes, as it did."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from gpufleet.store.db import MIGRATIONS

    engine = make_engine(database_url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0003")
        with engine.begin() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("workers")}
            assert "engines" not in columns and "runtime" not in columns
            conn.execute(sa.text(
                "INSERT INTO workers (name, address, work_queue, labels, gpus, cpu_count, memory_total, "
                "ram_reserved, vram_reserved, capabilities, registered_at) VALUES ('old', 'http://127.0.0.1:1', "
                "'node-old', '{}', '[]', 2, 1024, 0, 0, '[]', CURRENT_TIMESTAMP)"))
        migrate(engine)
        with session_factory(engine).begin() as session:
            (view,) = repo.list_workers(session, TIMEOUT)
        assert (view.name, view.engines, view.runtime) == ("old", [], "process")
        with engine.begin() as conn:  # and back: the downgrade drops both columns
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003")
            columns = {c["name"] for c in sa.inspect(conn).get_columns("workers")}
        assert "engines" not in columns and "runtime" not in columns
    finally:
        engine.dispose()


def test_in_memory_ledgers_never_miss_each_others_claims(database_url: str, tiny_gguf: Path) -> None:
    """Two engines on one database keep their own in-memory ledger, as two server processes do;
    each must see what the other claimed and what a deletion released: one 1 GiB GPU holds
    floor(1 GiB / c) replicas whoever places them, and a freed slot is reused."""
    engines = [make_engine(database_url) for _ in range(2)]
    migrate(engines[0])
    a, b = (session_factory(e) for e in engines)
    try:
        register(a, "g", [GpuInfo(index=0, name="T4-1G", memory_total=GiB, virtual=True)])
        claim = tiny_claim(tiny_gguf)
        fit = GiB // claim
        create(a, tiny_gguf, replicas=fit + 2)
        with a.begin() as s:
            ids = plan_apply.create_missing(s, "tiny")
        placed = []
        for i, iid in enumerate(ids[:-1]):  # alternate the "processes"
            with (a if i % 2 == 0 else b).begin() as s:
                placed.append(repo.place_instance(s, iid, TIMEOUT).worker_name)
        assert placed == ["g"] * fit + [None]  # the last one fits nowhere, whichever copy placed it
        with b.begin() as s:
            repo.delete_instance_row(s, ids[0])  # releases one slot
        with a.begin() as s:  # a's copy is stale now; it must see the slot
            assert repo.place_instance(s, ids[-1], TIMEOUT).worker_name == "g"
        with a.begin() as s:
            used = sum(c.vram_claim[0] for c in repo.cluster_snapshot(s, TIMEOUT).claims)
        assert used == fit * claim <= GiB
    finally:
        for e in engines:
            e.dispose()
