"""Rolling replacement (`edit --rollout`): the pure arithmetic and the plan's rollout rules,
as tables with the arithmetic beside each case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpufleet.core.plan import DesiredDeployment as D, ObservedInstance, ObservedWorker as W, plan
from gpufleet.core.rollout import RolloutStep, launch_config, outdated, rollout_step
from gpufleet.core.states import InstanceState as S

NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
UP = [W("a", True), W("b", True), W("c", True)]


@pytest.mark.parametrize(
    ("replicas", "n", "old", "new", "running", "expected"),
    [
        # start, 2 replicas, 1 at a time: remove min(2, 2+0−2)=0; create min(2−0, 2+1−2)=1 (the surge)
        (2, 1, 2, 0, 0, RolloutStep(create=1)),
        # the new one not RUNNING yet: remove min(2, 2+0−2)=0; live 3, create min(2−1, 3−3)=0 — wait
        (2, 1, 2, 1, 0, RolloutStep()),
        # the new one RUNNING: remove min(2, 2+1−2)=1; live 2, create min(2−1, 3−2)=1
        (2, 1, 2, 1, 1, RolloutStep(create=1, remove_old=1)),
        # one old left, second new still starting: remove min(1, 1+1−2)=0; live 3, create min(0, 0)=0
        (2, 1, 1, 2, 1, RolloutStep()),
        # both new RUNNING: remove min(1, 1+2−2)=1; create min(0, …)=0 — the last old goes
        (2, 1, 1, 2, 2, RolloutStep(remove_old=1)),
        # 2 at a time: create min(2−0, 2+2−2)=2 at once
        (2, 2, 2, 0, 0, RolloutStep(create=2)),
        # 2 at a time, both RUNNING: remove min(2, 2+2−2)=2
        (2, 2, 2, 2, 2, RolloutStep(remove_old=2)),
        # N above replicas: create min(2−0, 2+5−2)=2 (never more new than replicas)
        (2, 5, 2, 0, 0, RolloutStep(create=2)),
        # 4 replicas, 1 at a time, 3 old + 1 new RUNNING: remove min(3, 3+1−4)=0; live 4, create min(3, 5−4)=1
        (4, 1, 3, 1, 1, RolloutStep(create=1)),
        # scaled up to 3 during a rollout of 2 old: remove min(2, 2+0−3)→0; create min(3, 3+1−2)=2
        (3, 1, 2, 0, 0, RolloutStep(create=2)),
        # scaled down to 1 during it: remove min(2, 2+0−1)=1 (a plain scale-down); live 1, create min(1, 2−1)=1
        (1, 1, 2, 0, 0, RolloutStep(create=1, remove_old=1)),
        # scaled down to 1 with 2 new (1 RUNNING): new beyond replicas 2−1=1 go (not-running first);
        # kept 1 RUNNING: remove min(1, 1+1−1)=1
        (1, 1, 1, 2, 1, RolloutStep(remove_old=1, remove_new=1)),
        # replicas 0: every old goes (min(2, 2+0−0)=2), nothing created
        (0, 1, 2, 0, 0, RolloutStep(remove_old=2)),
        # nothing old left: nothing to do (the plan says done)
        (2, 1, 0, 2, 2, RolloutStep()),
    ],
)
def test_rollout_step(replicas: int, n: int, old: int, new: int, running: int, expected: RolloutStep) -> None:
    assert rollout_step(replicas, n, old, new, running) == expected


@pytest.mark.parametrize("args", [(-1, 1, 0, 0, 0), (1, 0, 1, 0, 0), (1, 1, 1, 1, 2), (1, 1, -1, 0, 0)])
def test_rollout_step_refuses_bad_counts(args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        rollout_step(*args)


def test_rollout_never_drops_running_below_replicas() -> None:
    """Simulate a rollout: new instances become RUNNING one round after they are created;
    at every round old RUNNING + new RUNNING ≥ replicas, and it ends with all new."""
    for replicas in range(0, 6):
        for n in range(1, 4):
            old, new, running, rounds = replicas, 0, 0, 0
            while old:
                step = rollout_step(replicas, n, old, new, running)
                running = new - step.remove_new  # what was created last round is RUNNING now
                old -= step.remove_old
                new = new - step.remove_new + step.create
                assert old + running >= replicas, (replicas, n, rounds)
                assert old + new <= replicas + n
                rounds += 1
                assert rounds < 50
            assert new == replicas


def test_outdated_ignores_policies_and_missing_defaults() -> None:
    base = {"source": {"local_path": "/m.gguf"}, "backend_params": [], "restart_on_error": True}
    assert not outdated(base, {**base, "restart_on_error": False, "lost_worker_grace_s": 30})
    assert not outdated({k: v for k, v in base.items() if k != "backend_params"}, base)  # [] == absent
    assert outdated(base, {**base, "backend_params": ["--ctx-size=256"]})
    assert "restart_on_error" not in launch_config(base)


def I(id: int, state: S, **kw: object) -> ObservedInstance:  # noqa: E743, N802
    return ObservedInstance(id=id, state=state, updated_at=NOW - timedelta(seconds=1), **kw)  # type: ignore[arg-type]


def steps(p: object) -> list[tuple[str, int | None, int]]:
    return [(a.kind.value, a.instance, a.count) for a in p.actions]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("deployment", "instances", "expected"),
    [
        # 2 old RUNNING, rollout 1 at a time: one new created beside them (the surge), nothing removed
        (D("m", 2, rollout=1), [I(1, S.RUNNING, worker="a", outdated=True), I(2, S.RUNNING, worker="b", outdated=True)],
         [("create", None, 1)]),
        # without a rollout the same outdated instances are left alone (edit's rule)
        (D("m", 2), [I(1, S.RUNNING, worker="a", outdated=True), I(2, S.RUNNING, worker="b", outdated=True)], []),
        # the new one RUNNING: the worst old (STARTING before RUNNING) is marked and stopped, a second new created
        (D("m", 2, rollout=1), [I(1, S.RUNNING, worker="a", outdated=True), I(2, S.STARTING, worker="b", outdated=True),
                                I(3, S.RUNNING, worker="c")],
         [("create", None, 1), ("mark-for-removal", 2, 0), ("stop", 2, 0)]),
        # the last old one marked for removal but not stopped yet: not done (its backend still runs)
        (D("m", 2, rollout=1), [I(2, S.RUNNING, worker="b", outdated=True, deleting=True), I(3, S.RUNNING, worker="c"),
                                I(4, S.RUNNING, worker="a")], [("stop", 2, 0)]),
        # no outdated instance left: done
        (D("m", 2, rollout=1), [I(3, S.RUNNING, worker="c"), I(4, S.RUNNING, worker="a")], [("rollout-done", None, 0)]),
        # the new one failed: the rollout stops, the failed one is removed (not restarted), the old stay
        (D("m", 2, rollout=1), [I(1, S.RUNNING, worker="a", outdated=True), I(2, S.RUNNING, worker="b", outdated=True),
                                I(3, S.ERROR, worker="c")],
         [("rollout-stopped", 3, 0), ("mark-for-removal", 3, 0), ("stop", 3, 0)]),
        # a new one that could not be placed stops it too (no room for the surge)
        (D("m", 2, rollout=1), [I(1, S.RUNNING, worker="a", outdated=True), I(2, S.RUNNING, worker="b", outdated=True),
                                I(3, S.PENDING, unplaced=True)],
         [("rollout-stopped", 3, 0), ("mark-for-removal", 3, 0), ("forget", 3, 0)]),
        # deleting the deployment: no rollout rule, every instance goes
        (D("m", 2, deleting=True, rollout=1), [I(1, S.RUNNING, worker="a", outdated=True)],
         [("mark-for-removal", 1, 0), ("stop", 1, 0)]),
    ],
)
def test_plan_rollout(deployment: D, instances: list[ObservedInstance], expected: list[tuple[str, int | None, int]]) -> None:
    assert steps(plan(deployment, instances, UP, NOW)) == expected


def test_per_deployment_lost_worker_grace() -> None:
    """A deployment's own grace wins over the cluster's (300 s): 60 s silent ≥ 30 s → rescheduled."""
    lost = [W("a", False, NOW - timedelta(seconds=60)), W("b", True)]
    inst = [I(1, S.UNREACHABLE, worker="a")]
    assert steps(plan(D("m", 1), inst, lost, NOW)) == []
    assert steps(plan(D("m", 1, lost_grace_s=30), inst, lost, NOW)) == [("reschedule", 1, 0)]


def test_desired_reads_rollout_and_grace_from_the_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grace is on the lifecycle clock like the cluster's (×GPUFLEET_TIME_SCALE)."""
    from gpufleet.store.models import DeploymentRow
    from gpufleet.store.plan_apply import desired

    monkeypatch.setenv("GPUFLEET_TIME_SCALE", "0.1")
    row = DeploymentRow(name="m", replicas=2, deleting=False, rollout_max_unavailable=2,
                        config={"source": {"local_path": "/m.gguf"}, "lost_worker_grace_s": 60})
    d = desired(row)
    assert (d.rollout, d.lost_grace_s) == (2, pytest.approx(6.0))  # 60 s × 0.1
    row.rollout_max_unavailable, row.config = None, {"source": {"local_path": "/m.gguf"}}
    assert (desired(row).rollout, desired(row).lost_grace_s) == (0, None)
