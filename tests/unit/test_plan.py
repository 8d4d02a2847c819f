"""The reconcile plan as tables: (deployment, instances, workers, clock) → actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpufleet.core.plan import (
    Action,
    ActionKind as K,
    DesiredDeployment as D,
    ObservedInstance,
    ObservedWorker as W,
    PlanOptions,
    plan,
    restart_delay_seconds,
)
from gpufleet.core.states import InstanceState as S

NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)


def I(id: int, state: S, age_s: float = 0.0, **kw: object) -> ObservedInstance:  # noqa: E743, N802
    """An instance last updated ``age_s`` seconds before NOW."""
    return ObservedInstance(id=id, state=state, updated_at=NOW - timedelta(seconds=age_s), **kw)  # type: ignore[arg-type]


UP = [W("a", True), W("b", True)]
A_DOWN = [W("a", False, NOW - timedelta(seconds=95)), W("b", True)]


def steps(p: object) -> list[tuple[str, int | None, str | None, int]]:
    return [(a.kind.value, a.instance, a.worker, a.count) for a in p.actions]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("deployment", "instances", "workers", "options", "expected"),
    [
        # nothing yet: create 2 (2 − 0)
        (D("m", 2), [], UP, PlanOptions(), [("create", None, None, 2)]),
        # 3 wanted, 1 RUNNING: create 3 − 1 = 2
        (D("m", 3), [I(1, S.RUNNING, worker="a")], UP, PlanOptions(), [("create", None, None, 2)]),
        # converged: nothing
        (D("m", 1), [I(1, S.RUNNING, worker="a")], UP, PlanOptions(), []),
        # a new PENDING instance is placed
        (D("m", 1), [I(1, S.PENDING)], UP, PlanOptions(), [("place", 1, None, 0)]),
        # an ANALYZING instance left behind by an older run is placed too
        (D("m", 1), [I(1, S.ANALYZING, 60)], UP, PlanOptions(), [("place", 1, None, 0)]),
        # one that did not fit is placed again only when asked (the cluster changed)
        (D("m", 1), [I(1, S.PENDING, unplaced=True)], UP, PlanOptions(retry_unplaced=False), []),
        (D("m", 1), [I(1, S.PENDING, unplaced=True)], UP, PlanOptions(), [("place", 1, None, 0)]),
        # placed in this round: served at once on its worker
        (D("m", 1), [I(1, S.SCHEDULED, worker="a")], UP, PlanOptions(fresh=frozenset({1})), [("serve", 1, "a", 0)]),
        # placed 5 s ago by another run: left to that run (5 < 30 s)
        (D("m", 1), [I(1, S.SCHEDULED, 5, worker="a")], UP, PlanOptions(), []),
        # placed 31 s ago and never started (31 ≥ 30 s): served again
        (D("m", 1), [I(1, S.SCHEDULED, 31, worker="a")], UP, PlanOptions(), [("serve", 1, "a", 0)]),
        # distributed: RPC servers on each part worker before the main server
        (D("m", 1), [I(1, S.SCHEDULED, worker="a", part_workers=("b", "c"))], UP + [W("c", True)],
         PlanOptions(fresh=frozenset({1})),
         [("serve-rpc", 1, "b", 0), ("serve-rpc", 1, "c", 0), ("serve", 1, "a", 0)]),
        # scale 2 → 1: the STARTING one goes (worse than RUNNING), stopped on its worker
        (D("m", 1), [I(1, S.RUNNING, worker="a"), I(2, S.STARTING, worker="b")], UP, PlanOptions(),
         [("mark-for-removal", 2, None, 0), ("stop", 2, "b", 0)]),
        # scale to 0 with an unplaced one: it is forgotten at once, the placed one stopped
        (D("m", 0), [I(1, S.PENDING), I(2, S.RUNNING, worker="a")], UP, PlanOptions(),
         [("mark-for-removal", 1, None, 0), ("mark-for-removal", 2, None, 0), ("forget", 1, None, 0),
          ("stop", 2, "a", 0)]),
        # marked earlier (delete-instance): it does not count, so a replacement is created, and it is stopped
        (D("m", 1), [I(1, S.RUNNING, worker="a", deleting=True)], UP, PlanOptions(),
         [("create", None, None, 1), ("stop", 1, "a", 0)]),
        # a distributed instance being removed is stopped on every worker it runs on
        (D("m", 0), [I(1, S.RUNNING, worker="a", part_workers=("b",))], UP, PlanOptions(),
         [("mark-for-removal", 1, None, 0), ("stop", 1, "a", 0), ("stop", 1, "b", 0)]),
        # deleting the deployment: every instance marked; it is forgotten once none is placed
        (D("m", 3, deleting=True), [I(1, S.RUNNING, worker="a")], UP, PlanOptions(),
         [("mark-for-removal", 1, None, 0), ("stop", 1, "a", 0)]),
        (D("m", 3, deleting=True), [I(1, S.PENDING, deleting=True)], UP, PlanOptions(),
         [("forget", 1, None, 0), ("forget-deployment", None, None, 0)]),
        (D("m", 3, deleting=True), [], UP, PlanOptions(), [("forget-deployment", None, None, 0)]),
        # worker a lost its heartbeats: its RUNNING instance is UNREACHABLE, b's is not
        (D("m", 2), [I(1, S.RUNNING, worker="a"), I(2, S.RUNNING, worker="b")], A_DOWN, PlanOptions(),
         [("mark-unreachable", 1, "a", 0)]),
        # … also when only a part worker of a distributed instance is lost
        (D("m", 1), [I(1, S.RUNNING, worker="b", part_workers=("a",))], A_DOWN, PlanOptions(),
         [("mark-unreachable", 1, "a", 0)]),
        # placed on a in this round or 40 s ago but a was lost before starting it: released and placed
        # again (not served there); the plan's next round places it elsewhere
        (D("m", 1), [I(1, S.SCHEDULED, 0, worker="a")], A_DOWN, PlanOptions(fresh=frozenset({1})),
         [("release", 1, "a", 0)]),
        (D("m", 1), [I(1, S.SCHEDULED, 40, worker="b", part_workers=("a",))], A_DOWN, PlanOptions(),
         [("release", 1, "a", 0)]),
        # an already UNREACHABLE or still PENDING instance is not marked again
        (D("m", 1), [I(1, S.UNREACHABLE, worker="a")], A_DOWN, PlanOptions(), []),
        # restart back-off: restart_count 0 waits 10 s, 2 waits 10 × 2² = 40 s
        (D("m", 1), [I(1, S.ERROR, 9, worker="a")], UP, PlanOptions(), []),
        (D("m", 1), [I(1, S.ERROR, 10, worker="a")], UP, PlanOptions(), [("restart", 1, "a", 0)]),
        (D("m", 1), [I(1, S.ERROR, 39, worker="a", restart_count=2)], UP, PlanOptions(), []),
        (D("m", 1), [I(1, S.ERROR, 40, worker="a", restart_count=2)], UP, PlanOptions(), [("restart", 1, "a", 0)]),
        # capped at 300 s however many restarts: 10 × 2⁹ = 5120 → 300
        (D("m", 1), [I(1, S.ERROR, 300, worker="a", restart_count=9)], UP, PlanOptions(), [("restart", 1, "a", 0)]),
        # not restarted while its worker is down, nor when being deleted, nor before it was ever placed
        (D("m", 1), [I(1, S.ERROR, 600, worker="a")], A_DOWN, PlanOptions(), []),
        (D("m", 1, deleting=True), [I(1, S.ERROR, 600, worker="a", deleting=True)], UP, PlanOptions(),
         [("stop", 1, "a", 0)]),
        (D("m", 1), [I(1, S.ERROR, 600)], UP, PlanOptions(), []),
    ],
)
def test_plan(deployment: D, instances: list[ObservedInstance], workers: list[W], options: PlanOptions,
              expected: list[tuple[str, int | None, str | None, int]]) -> None:
    assert steps(plan(deployment, instances, workers, NOW, options)) == expected


@pytest.mark.parametrize(
    ("desired", "instances", "removed"),
    [
        (0, [I(1, S.RUNNING, worker="a"), I(2, S.STARTING, worker="a")], [2, 1]),  # STARTING is worse than RUNNING
        (1, [I(1, S.RUNNING, worker="a"), I(2, S.ERROR, worker="a"), I(3, S.RUNNING, worker="a")], [2, 3]),  # ERROR, then newest
        (1, [I(1, S.RUNNING, worker="a"), I(2, S.UNREACHABLE, worker="a")], [2]),
        # worst first: ERROR, UNREACHABLE, unplaced, offloaded, then the lowest score
        (0, [I(1, S.RUNNING, worker="a", score=90.0), I(2, S.RUNNING, worker="a", score=40.0),
             I(3, S.RUNNING, worker="a", offloaded=True, score=99.0), I(4, S.UNREACHABLE, worker="a", score=99.0),
             I(5, S.ERROR, worker="a", score=99.0), I(6, S.PENDING)], [5, 4, 6, 3, 2, 1]),
    ],
)
def test_scale_down_removes_worst_first(desired: int, instances: list[ObservedInstance], removed: list[int]) -> None:
    p = plan(D("m", desired), instances, UP, NOW)
    assert [a.instance for a in p.of(K.MARK_FOR_REMOVAL)] == removed


def test_every_action_says_why() -> None:
    p = plan(D("m", 1), [I(1, S.ERROR, 45, worker="a", restart_count=1), I(2, S.RUNNING, worker="a")], UP, NOW)
    assert [a.kind for a in p.actions] == [K.MARK_FOR_REMOVAL, K.STOP]  # the ERROR one goes rather than restarts
    assert p.actions[0].reason == "2 replicas exist, 1 wanted; ERROR on a"
    restart = plan(D("m", 1), [I(1, S.ERROR, 45, worker="a", restart_count=1)], UP, NOW).actions[0]
    assert restart == Action(K.RESTART, instance=1, worker="a",
                             reason="failed 45 s ago; restart 2 after a 20 s back-off")
    lost = plan(D("m", 1), [I(1, S.RUNNING, worker="a")], A_DOWN, NOW).actions[0]
    assert lost.reason == "worker a stopped sending heartbeats (last 2026-12-05T11:58:25+00:00)"


def test_database_and_node_actions_are_separated() -> None:
    p = plan(D("m", 1), [I(1, S.PENDING), I(2, S.RUNNING, worker="a"), I(3, S.SCHEDULED, 60, worker="b")], UP, NOW)
    assert [a.kind for a in p.database_actions] == [K.MARK_FOR_REMOVAL, K.MARK_FOR_REMOVAL, K.FORGET]
    # removal order: 1 (unplaced), then 3 (SCHEDULED is less far along than RUNNING); 3 is stopped on b
    assert [(a.kind, a.instance, a.worker) for a in p.node_actions] == [(K.STOP, 3, "b")]


def test_negative_replicas_rejected() -> None:
    with pytest.raises(ValueError, match="replicas must be >= 0"):
        plan(D("m", -1), [], UP, NOW)


@pytest.mark.parametrize(
    ("restarts", "delay"),
    [(0, 10.0), (1, 20.0), (2, 40.0), (4, 160.0), (5, 300.0), (50, 300.0)],  # 10 × 2^n, capped at 300
)
def test_restart_backoff(restarts: int, delay: float) -> None:
    assert restart_delay_seconds(restarts) == delay
