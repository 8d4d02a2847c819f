"""Lost workers on real databases (SQLite and PostgreSQL): after the grace their instances are
placed elsewhere, removals on them complete at once, `workers rm` decommissions, and a
returning node's stale reports cannot overwrite where an instance runs now."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from gpufleet.core.plan import Timing
from gpufleet.core.schemas import GpuInfo, InstanceStateUpdate, StateReports
from gpufleet.core.states import InstanceState
from gpufleet.server.app import create_app
from gpufleet.store import plan_apply, repository as repo
from gpufleet.store.models import InstanceRow, WorkerRow, utcnow
from tests.integration.test_store import GiB, TIMEOUT, create, register, sessions  # noqa: F401 - fixture

GPU = [GpuInfo(index=0, name="A100-80G", memory_total=80 * GiB, virtual=True)]


def kinds(applied) -> list[tuple[str, int, str]]:  # noqa: ANN001
    return [(a.kind, a.instance, a.worker) for a in applied.node_actions]


def running_on(sessions, tiny_gguf: Path, worker: str) -> int:  # noqa: ANN001
    """One replica RUNNING on ``worker`` (the only worker when it is placed)."""
    register(sessions, worker, GPU)
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as s:
        [iid] = plan_apply.apply_plan(s, "tiny", TIMEOUT).created
        for st in (InstanceState.STARTING, InstanceState.RUNNING):
            repo.update_instance_state(s, iid, InstanceStateUpdate(state=st))
    return iid


def silence(sessions, worker: str, seconds: float) -> None:  # noqa: ANN001
    with sessions.begin() as s:
        s.execute(update(WorkerRow).where(WorkerRow.name == worker)
                  .values(last_heartbeat=utcnow() - timedelta(seconds=seconds)))


def test_rescheduled_after_the_grace_only(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    """Grace 300 s: silent for 200 s → UNREACHABLE and kept; silent for 301 s → placed on `fresh`."""
    iid = running_on(sessions, tiny_gguf, "lost")
    register(sessions, "fresh", GPU)
    silence(sessions, "lost", 200)
    with sessions.begin() as s:
        waiting = plan_apply.apply_plan(s, "tiny", TIMEOUT)
        assert waiting.unreachable == [iid] and waiting.placed == {} and kinds(waiting) == []
        assert s.get(InstanceRow, iid).worker_name == "lost"
    silence(sessions, "lost", 301)
    with sessions.begin() as s:
        moved = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    assert moved.released == [iid] and moved.placed == {iid: "fresh"}
    assert kinds(moved) == [("serve", iid, "fresh")]
    with sessions.begin() as s:
        assert [(c.instance, c.worker) for c in repo.cluster_snapshot(s, TIMEOUT).claims] == [(iid, "fresh")]
        # the lost node comes back and reports its old backend's exit: stale, refused, nothing changes
        result = repo.update_instance_states(s, {iid: InstanceStateUpdate(state=InstanceState.ERROR, worker="lost")})
        assert iid in result.refused and "no longer placed on worker lost" in result.refused[iid]
        assert s.get(InstanceRow, iid).state == InstanceState.SCHEDULED


def test_compressed_grace(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    """The same rule on the test clock: GPUFLEET_TIME_SCALE=0.01 makes the grace 3 s."""
    iid = running_on(sessions, tiny_gguf, "lost")
    register(sessions, "fresh", GPU)
    silence(sessions, "lost", 61)
    fast = Timing().scaled(0.01)
    with sessions.begin() as s:
        dep = repo._deployment(s, "tiny")
        plan_apply.apply_plan(s, "tiny", TIMEOUT)  # UNREACHABLE
        actions = plan_apply.plan_for(s, dep, utcnow(), TIMEOUT, timing=fast).actions
    assert [(a.kind.value, a.instance) for a in actions][:1] == [("reschedule", iid)]


def test_manual_gpu_selection_stays_unreachable(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    iid = running_on(sessions, tiny_gguf, "lost")
    register(sessions, "fresh", GPU)
    with sessions.begin() as s:
        row = s.get(InstanceRow, iid)
        row.config = {**row.config, "placement": {**row.config.get("placement", {}), "gpu_selector": ["lost:0"]}}
    silence(sessions, "lost", 3600)
    for _ in range(2):
        with sessions.begin() as s:
            applied = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    assert applied.placed == {} and applied.released == []
    with sessions.begin() as s:
        inst = repo.get_instance(s, iid)
    assert inst.state == InstanceState.UNREACHABLE and inst.worker == "lost"
    assert "chosen by hand" in inst.state_message


def test_delete_on_a_lost_worker_completes_at_once(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    """No stop run waits for a node that is gone: records removed, claims released, in one call."""
    iid = running_on(sessions, tiny_gguf, "lost")
    silence(sessions, "lost", 120)
    with sessions.begin() as s:
        repo.mark_deployment_deleting(s, "tiny")
    with sessions.begin() as s:
        gone = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    assert gone.exists is False and gone.forgotten == [iid] and kinds(gone) == []
    with sessions.begin() as s:
        assert repo.cluster_snapshot(s, TIMEOUT).claims == [] and repo.list_deployments(s) == []


def test_workers_rm(tmp_path: Path, tiny_gguf: Path) -> None:
    """Refused while alive (409) unless forced; unknown → 404; removed → its instance moves."""
    app = create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=lambda op, params: "", run_controller=False, auth=False)
    with TestClient(app) as api:
        state = app.state.gpufleet
        iid = running_on(state.sessions, tiny_gguf, "old")
        register(state.sessions, "new", GPU)
        r = api.delete("/v1/workers/old")
        assert r.status_code == 409 and "alive" in r.json()["detail"] and "--force" in r.json()["detail"]
        assert api.delete("/v1/workers/nope").status_code == 404
        silence(state.sessions, "old", 120)
        r = api.delete("/v1/workers/old")
        assert r.status_code == 200 and r.json()["instances"] == [iid]
        assert [w["name"] for w in api.get("/v1/workers").json()] == ["new"]
        with state.sessions.begin() as s:
            # UNREACHABLE (its worker was removed), then, without a grace, placed again: one call
            moved = plan_apply.apply_plan(s, "tiny", TIMEOUT)
        assert moved.unreachable == [iid] and moved.released == [iid] and moved.placed == {iid: "new"}
        assert kinds(moved) == [("serve", iid, "new")]
        r = api.delete("/v1/workers/new", params={"force": "true"})
        assert r.status_code == 200


def test_stale_report_through_the_api_is_409(tmp_path: Path, tiny_gguf: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=lambda op, params: "", run_controller=False, auth=False)
    with TestClient(app) as api:
        iid = running_on(app.state.gpufleet.sessions, tiny_gguf, "a")
        r = api.put(f"/v1/internal/instances/{iid}/state", json={"state": "ERROR", "worker": "b"})
        assert r.status_code == 409 and "no longer placed on worker b" in r.json()["detail"]
        body = StateReports(reports={iid: InstanceStateUpdate(state=InstanceState.ERROR, message="x", worker="a")})
        assert api.put("/v1/internal/instances/states", json=body.model_dump(mode="json")).json()["applied"] == [iid]


@pytest.mark.parametrize("state", [InstanceState.ERROR, InstanceState.DOWNLOADING])
def test_any_placed_state_becomes_unreachable(sessions, tiny_gguf: Path, state: InstanceState) -> None:  # noqa: ANN001
    iid = running_on(sessions, tiny_gguf, "lost")
    with sessions.begin() as s:
        repo.update_instance_state(s, iid, InstanceStateUpdate(state=InstanceState.ERROR))
        if state == InstanceState.DOWNLOADING:
            repo.update_instance_state(s, iid, InstanceStateUpdate(state=InstanceState.STARTING))
            s.get(InstanceRow, iid).state = InstanceState.DOWNLOADING
    silence(sessions, "lost", 60)
    with sessions.begin() as s:
        applied = plan_apply.apply_plan(s, "tiny", TIMEOUT)
        assert applied.unreachable == [iid] and s.get(InstanceRow, iid).state == InstanceState.UNREACHABLE
