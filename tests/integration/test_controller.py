"""The server's control loop on a real database: backoff before restarts, UNREACHABLE on lost workers.

The trigger is recorded here instead of starting Prefect runs; the end-to-end
journeys exercise the real restart flow."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from gpufleet.core.schemas import DeploymentEdit, DeploymentSpec, GpuInfo, InstanceStateUpdate, ModelSource, WorkerRegistration
from gpufleet.core.states import InstanceState
from gpufleet.server.app import ServerState
from gpufleet.server.controller import Controller
from gpufleet.sources import read_local_metadata
from gpufleet.core.estimation.summary import summarize
from gpufleet.store import plan_apply, repository as repo
from gpufleet.store.models import InstanceRow, WorkerRow, utcnow


@pytest.fixture
def setup(database_url: str, tiny_gguf: Path):  # noqa: ANN201
    calls: list[tuple[str, dict[str, Any]]] = []
    state = ServerState(database_url, lambda op, params: calls.append((op, params)) or "run")
    _, meta = read_local_metadata(str(tiny_gguf))
    with state.session() as s:
        repo.register_worker(s, WorkerRegistration(
            name="w", address="http://127.0.0.1:1", cpu_count=2, memory_total=8 << 30, work_queue="node-w",
            gpus=[GpuInfo(index=0, name="T4", memory_total=1 << 30, virtual=True)]))
        repo.create_deployment(s, DeploymentSpec(name="d", replicas=1, source=ModelSource(local_path=str(tiny_gguf))),
                               meta, summarize(meta, "llama.cpp"))
        iid = plan_apply.create_missing(s, "d")[0]
        repo.place_instance(s, iid, timedelta(seconds=60))
    yield state, Controller(state, lambda op, params: calls.append((op, params)) or "run"), iid, calls
    state.engine.dispose()


def report(state: ServerState, iid: int, st: InstanceState, restarts: int | None = None) -> None:
    with state.session() as s:
        repo.update_instance_state(s, iid, InstanceStateUpdate(state=st, restart_count=restarts))


@pytest.mark.parametrize(
    ("restarts", "wait_s"),
    [(0, 0), (1, 10), (3, 40), (6, 300), (9, 300)],  # at once, then 10 s × 2^(n−1), capped at 300 s
)
def test_restart_waits_for_backoff(setup, restarts: int, wait_s: int) -> None:  # noqa: ANN001
    state, controller, iid, calls = setup
    report(state, iid, InstanceState.STARTING, restarts)
    report(state, iid, InstanceState.ERROR)
    with state.session() as s:
        failed_at = s.get(InstanceRow, iid).updated_at
    controller.run_once(now=failed_at + timedelta(seconds=wait_s - 0.5))
    assert calls == []
    with state.session() as s:  # stored: failure time + back-off, and shown
        view = repo.get_instance(s, iid)
    assert view.next_restart_at is not None
    assert abs((view.next_restart_at - failed_at).total_seconds() - wait_s) < 1e-3
    assert view.crash_looping is (restarts >= 3)
    controller.run_once(now=failed_at + timedelta(seconds=wait_s + 0.5))
    assert calls == [("restart", {"instance_id": iid})]
    controller.run_once(now=failed_at + timedelta(seconds=wait_s + 5))
    assert len(calls) == 1  # one restart per failure, not one per round


def test_restart_time_survives_a_server_restart(setup) -> None:  # noqa: ANN001
    """A new controller (a restarted server) reads the stored time: neither sooner nor again later."""
    state, controller, iid, calls = setup
    report(state, iid, InstanceState.STARTING, 2)
    report(state, iid, InstanceState.ERROR)
    with state.session() as s:
        failed_at = s.get(InstanceRow, iid).updated_at
    controller.run_once(now=failed_at + timedelta(seconds=5))  # stores failed_at + 20 s
    restarted = Controller(state, lambda op, params: calls.append((op, params)) or "run")
    restarted.run_once(now=failed_at + timedelta(seconds=19))
    assert calls == []
    with state.session() as s:
        assert abs((repo.get_instance(s, iid).next_restart_at - failed_at).total_seconds() - 20) < 1e-3
    restarted.run_once(now=failed_at + timedelta(seconds=21))
    assert calls == [("restart", {"instance_id": iid})]


def test_no_restart_when_restart_on_error_is_off(setup) -> None:  # noqa: ANN001
    state, controller, iid, calls = setup
    with state.session() as s:
        repo.edit_deployment(s, "d", DeploymentEdit(restart_on_error=False))
    report(state, iid, InstanceState.STARTING)
    report(state, iid, InstanceState.ERROR)
    controller.run_once(now=utcnow() + timedelta(hours=1))
    assert calls == []
    with state.session() as s:
        assert repo.get_instance(s, iid).next_restart_at is None


def test_stable_window_resets_the_count(setup) -> None:  # noqa: ANN001
    """restart_count 4 is kept through 599 s of RUNNING and forgotten at 600 s (the default window)."""
    state, controller, iid, calls = setup
    report(state, iid, InstanceState.STARTING, 4)
    report(state, iid, InstanceState.RUNNING)
    with state.session() as s:
        since = s.get(InstanceRow, iid).running_since
    assert since is not None
    controller.run_once(now=since + timedelta(seconds=599))
    with state.session() as s:
        assert s.get(InstanceRow, iid).restart_count == 4
    controller.run_once(now=since + timedelta(seconds=600))
    with state.session() as s:
        assert s.get(InstanceRow, iid).restart_count == 0
    assert calls == []


def test_runs_never_pile_up(setup) -> None:  # noqa: ANN001
    """A restart run still RUNNING in Prefect: no second one for the same instance, even for
    its next failure; once that run COMPLETED, the next failure gets its run."""
    state, _, iid, calls = setup
    states: dict[str, str] = {}
    runs = iter(f"run-{n}" for n in range(10))

    def trigger(op: str, params: dict[str, Any]) -> str:
        calls.append((op, params))
        run = next(runs)
        states[run] = "SCHEDULED"
        return run

    controller = Controller(state, trigger, run_state=states.get)
    report(state, iid, InstanceState.STARTING)
    report(state, iid, InstanceState.ERROR)
    controller.run_once()
    assert calls == [("restart", {"instance_id": iid})]
    report(state, iid, InstanceState.STARTING, 1)  # the run restarted it … and it failed again
    report(state, iid, InstanceState.ERROR)
    states["run-0"] = "RUNNING"
    controller.run_once(now=utcnow() + timedelta(seconds=60))
    assert len(calls) == 1  # run-0 still going
    states["run-0"] = "COMPLETED"
    controller.run_once(now=utcnow() + timedelta(seconds=60))
    assert calls == [("restart", {"instance_id": iid})] * 2


def test_lost_worker_makes_instances_unreachable(setup) -> None:  # noqa: ANN001
    state, controller, iid, calls = setup
    report(state, iid, InstanceState.STARTING)
    report(state, iid, InstanceState.RUNNING)
    controller.run_once()
    with state.session() as s:
        assert repo.get_instance(s, iid).state == InstanceState.RUNNING
    with state.session() as s:
        s.execute(update(WorkerRow).values(last_heartbeat=utcnow() - timedelta(minutes=5)))
    controller.run_once()
    with state.session() as s:
        inst = repo.get_instance(s, iid)
    assert inst.state == InstanceState.UNREACHABLE
    assert "worker w stopped sending heartbeats" in inst.state_message
    assert calls == []  # unreachable is not restarted: the backend may still be serving


def test_unconverged_deployment_is_driven_again(setup) -> None:  # noqa: ANN001
    """A deployment wanting 1 replica whose instance sat SCHEDULED (its serve run lost):
    nothing for 29 s after the last change, a `reconcile` run at 31 s, and not again at 40 s."""
    state, controller, iid, calls = setup
    with state.session() as s:
        placed_at = max(s.get(InstanceRow, iid).updated_at, repo._deployment(s, "d").updated_at)
    controller.run_once(now=placed_at + timedelta(seconds=29))
    assert calls == []
    controller.run_once(now=placed_at + timedelta(seconds=31))
    assert calls == [("reconcile", {"name": "d"})]
    controller.run_once(now=placed_at + timedelta(seconds=40))
    assert len(calls) == 1


def test_lost_part_worker_makes_a_distributed_instance_unreachable(setup) -> None:  # noqa: ANN001
    """A distributed instance needs every worker: the main one (w) still beats, but its
    RPC part on p stopped, so the instance is UNREACHABLE and says which worker."""
    state, controller, iid, calls = setup
    with state.session() as s:
        repo.register_worker(s, WorkerRegistration(
            name="p", address="http://127.0.0.1:2", cpu_count=2, memory_total=8 << 30, work_queue="node-p",
            gpus=[GpuInfo(index=0, name="T4", memory_total=1 << 30, virtual=True)]))
        row = s.get(InstanceRow, iid)
        row.placement = {**row.placement, "stage": "distributed", "tensor_split": [1.0, 1.0],
                         "parts": [{"worker": "p", "gpu_indexes": [0], "vram_claim": {"0": 1}, "ram_claim": 0}]}
    report(state, iid, InstanceState.STARTING)
    report(state, iid, InstanceState.RUNNING)
    controller.run_once()
    with state.session() as s:
        assert repo.get_instance(s, iid).state == InstanceState.RUNNING
        s.execute(update(WorkerRow).where(WorkerRow.name == "p").values(last_heartbeat=utcnow() - timedelta(minutes=5)))
    controller.run_once()
    with state.session() as s:
        inst = repo.get_instance(s, iid)
    assert inst.state == InstanceState.UNREACHABLE
    assert "part worker p stopped sending heartbeats" in inst.state_message
    assert calls == []


def test_wakes_for_a_restart_due_before_the_next_tick(setup) -> None:  # noqa: ANN001
    """The loop sleeps until the earliest stored restart time when it comes before the 2 s tick
    (on the compressed clock a 10 s back-off is 0.1 s), and a reported failure wakes it."""
    state, controller, iid, calls = setup
    report(state, iid, InstanceState.STARTING, 1)
    report(state, iid, InstanceState.ERROR)
    with state.session() as s:  # it failed 9.5 s ago: restart 2 is due 10 s after, ~0.5 s from now
        s.execute(update(InstanceRow).values(updated_at=utcnow() - timedelta(seconds=9.5)))
    controller.run_once()
    assert calls == [] and 0 < controller._pause() < 1.0
    controller.wake()
    assert controller._wake.is_set()


def test_a_planned_stop_comes_back_at_once(setup) -> None:  # noqa: ANN001
    """After `gpufleet down` / `up` the node reports its backends as stopped on purpose: restarted
    in the same round although 5 restarts would mean a 160 s back-off."""
    from gpufleet.core.plan import PLANNED_STOP

    state, controller, iid, calls = setup
    report(state, iid, InstanceState.STARTING, 5)
    report(state, iid, InstanceState.RUNNING)
    with state.session() as s:
        repo.update_instance_state(s, iid, InstanceStateUpdate(
            state=InstanceState.ERROR, message=f"{PLANNED_STOP} w when it last exited (backend); starting it again"))
    controller.run_once()
    assert calls == [("restart", {"instance_id": iid})]
