"""The server's side of the plan on real databases (SQLite and PostgreSQL): database actions
applied in one transaction, node actions returned with what the flow needs to run them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from gpufleet.core.schemas import GpuInfo, InstanceStateUpdate
from gpufleet.core.states import InstanceState
from gpufleet.store import plan_apply, repository as repo
from gpufleet.store.models import DeploymentRow
from tests.integration.test_store import GiB, TIMEOUT, create, register, sessions  # noqa: F401 - fixture

GPU = [GpuInfo(index=0, name="A100-80G", memory_total=80 * GiB, virtual=True)]


def kinds(applied) -> list[tuple[str, int, str]]:  # noqa: ANN001
    return [(a.kind, a.instance, a.worker) for a in applied.node_actions]


def test_deploy_creates_places_and_serves_in_one_call(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    register(sessions, "w", GPU)
    create(sessions, tiny_gguf, replicas=2)
    with sessions.begin() as s:
        applied = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    a, b = applied.created
    assert applied.placed == {a: "w", b: "w"} and applied.unplaced == {}
    assert kinds(applied) == [("serve", a, "w"), ("serve", b, "w")]
    assert [i.id for i in applied.instances] == [a, b] and all(i.state == "SCHEDULED" for i in applied.instances)
    assert applied.worker_addresses == {"w": "http://127.0.0.1:1"}
    assert applied.metadata is not None and applied.metadata.architecture == "llama"
    with sessions.begin() as s:  # at once again: converged, and placed by "another run" (not stale): nothing
        again = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    assert (again.created, again.placed, again.node_actions) == ([], {}, [])


def test_scale_down_stops_then_forgets_and_releases(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    register(sessions, "w", GPU)
    create(sessions, tiny_gguf, replicas=2)
    with sessions.begin() as s:
        a, b = plan_apply.apply_plan(s, "tiny", TIMEOUT).created
        repo.update_instance_state(s, a, InstanceStateUpdate(state=InstanceState.STARTING))
        repo.update_instance_state(s, a, InstanceStateUpdate(state=InstanceState.RUNNING))
        repo.set_replicas(s, "tiny", 1)
    with sessions.begin() as s:
        down = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    assert kinds(down) == [("stop", b, "w")]  # SCHEDULED goes before RUNNING
    with sessions.begin() as s:
        assert len(repo.cluster_snapshot(s, TIMEOUT).claims) == 2  # held until the stop is done
        after = plan_apply.apply_plan(s, "tiny", TIMEOUT, stopped=[b, a])  # a is not marked: ignored
    assert after.forgotten == [b] and after.node_actions == []
    with sessions.begin() as s:
        assert [c.instance for c in repo.cluster_snapshot(s, TIMEOUT).claims] == [a]


def test_unplaceable_stays_pending_and_is_not_retried_until_asked(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    create(sessions, tiny_gguf, replicas=1)  # no worker at all
    with sessions.begin() as s:
        applied = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    [iid] = applied.created
    assert "no workers registered" in applied.unplaced[iid] and applied.node_actions == []
    register(sessions, "w", GPU)
    with sessions.begin() as s:
        skipped = plan_apply.apply_plan(s, "tiny", TIMEOUT, retry_unplaced=False)
    assert skipped.placed == {}
    with sessions.begin() as s:
        retried = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    assert retried.placed == {iid: "w"} and kinds(retried) == [("serve", iid, "w")]


def test_delete_forgets_instances_then_the_deployment(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    register(sessions, "w", GPU)
    create(sessions, tiny_gguf, replicas=2)
    with sessions.begin() as s:
        a, b = plan_apply.apply_plan(s, "tiny", TIMEOUT).created
        repo.mark_deployment_deleting(s, "tiny")
    with sessions.begin() as s:
        stopping = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    assert stopping.exists and sorted(kinds(stopping)) == [("stop", a, "w"), ("stop", b, "w")]
    with sessions.begin() as s:
        gone = plan_apply.apply_plan(s, "tiny", TIMEOUT, stopped=[a, b])
    assert not gone.exists and sorted(gone.forgotten) == [a, b]
    with sessions.begin() as s:
        assert s.scalars(select(DeploymentRow)).all() == []
        assert repo.cluster_snapshot(s, TIMEOUT).claims == []
    with sessions.begin() as s, pytest.raises(plan_apply.UnknownDeployment, match="'tiny' not found"):
        plan_apply.apply_plan(s, "tiny", TIMEOUT)


def test_state_reports_in_one_request_stand_alone(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    register(sessions, "w", GPU)
    create(sessions, tiny_gguf, replicas=2)
    with sessions.begin() as s:
        a, b = plan_apply.apply_plan(s, "tiny", TIMEOUT).created
    running = InstanceStateUpdate(state=InstanceState.RUNNING)  # SCHEDULED → RUNNING is not allowed
    starting = InstanceStateUpdate(state=InstanceState.STARTING, port=9000)
    with sessions.begin() as s:
        result = repo.update_instance_states(s, {a: starting, b: running, 99999: starting})
    assert result.applied == [a] and result.missing == [99999] and list(result.refused) == [b]
    with sessions.begin() as s:
        assert repo.get_instance(s, a).port == 9000 and repo.get_instance(s, b).state == InstanceState.SCHEDULED


def test_a_placement_on_a_worker_lost_before_it_started_is_placed_again(sessions, tiny_gguf: Path) -> None:  # noqa: ANN001
    from sqlalchemy import update

    from gpufleet.store.models import WorkerRow, utcnow

    register(sessions, "lost", GPU)
    create(sessions, tiny_gguf, replicas=1)
    with sessions.begin() as s:
        [iid] = plan_apply.apply_plan(s, "tiny", TIMEOUT).created  # placed on "lost", the only worker
        s.execute(update(WorkerRow).values(last_heartbeat=utcnow() - 2 * TIMEOUT))
    register(sessions, "fresh", GPU)
    with sessions.begin() as s:
        moved = plan_apply.apply_plan(s, "tiny", TIMEOUT)
    assert moved.released == [iid] and moved.placed == {iid: "fresh"}
    assert kinds(moved) == [("serve", iid, "fresh")]
    with sessions.begin() as s:
        assert [(c.instance, c.worker) for c in repo.cluster_snapshot(s, TIMEOUT).claims] == [(iid, "fresh")]
