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
    Timing,
    crash_looping,
    restart_delay_seconds,
)
from gpufleet.core.states import InstanceState as S

NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)


def I(id: int, state: S, age_s: float = 0.0, **kw: object) -> ObservedInstance:  # noqa: E743, N802
    """An instance last updated ``age_s`` seconds before NOW."""
    return ObservedInstance(id=id, state=state, updated_at=NOW - timedelta(seconds=age_s), **kw)  # type: ignore[arg-type]


UP = [W("a", True), W("b", True)]
A_DOWN = [W("a", False, NOW - timedelta(seconds=95)), W("b", True)]
A_GONE = [W("a", False, NOW - timedelta(seconds=300)), W("b", True)]  # silent for the whole grace


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
        # ERROR: its next restart time is stored first (failure time + back-off); the first restart is due
        # at once (restart_count 0 → 0 s), so it is restarted in the same plan
        (D("m", 1), [I(1, S.ERROR, 0, worker="a")], UP, PlanOptions(),
         [("schedule-restart", 1, "a", 0), ("restart", 1, "a", 0)]),
        # restart_count 1 → 10 × 2⁰ = 10 s: failed 9 s ago, stored but not due; 10 s ago: due
        (D("m", 1), [I(1, S.ERROR, 9, worker="a", restart_count=1)], UP, PlanOptions(), [("schedule-restart", 1, "a", 0)]),
        (D("m", 1), [I(1, S.ERROR, 10, worker="a", restart_count=1)], UP, PlanOptions(),
         [("schedule-restart", 1, "a", 0), ("restart", 1, "a", 0)]),
        # a stored time is not stored again; restarted only once it has come (NOW − 1 s: due)
        (D("m", 1), [I(1, S.ERROR, 30, worker="a", restart_count=3, next_restart_at=NOW + timedelta(seconds=10))],
         UP, PlanOptions(), []),
        (D("m", 1), [I(1, S.ERROR, 50, worker="a", restart_count=3, next_restart_at=NOW - timedelta(seconds=1))],
         UP, PlanOptions(), [("restart", 1, "a", 0)]),
        # a backend its node stopped on purpose (gpufleet down): at once, whatever the count (not 10 × 2⁴ = 160 s)
        (D("m", 1), [I(1, S.ERROR, 0, worker="a", restart_count=5, planned_stop=True)], UP, PlanOptions(),
         [("schedule-restart", 1, "a", 0), ("restart", 1, "a", 0)]),
        # … and with restart on error off too: a planned stop is no error
        (D("m", 1, restart_on_error=False), [I(1, S.ERROR, 0, worker="a", planned_stop=True)], UP, PlanOptions(),
         [("schedule-restart", 1, "a", 0), ("restart", 1, "a", 0)]),
        # restart on error off: an ERROR instance stays ERROR
        (D("m", 1, restart_on_error=False), [I(1, S.ERROR, 600, worker="a", restart_count=2)], UP, PlanOptions(), []),
        # a lost worker: its ERROR instance becomes UNREACHABLE (not restarted there), whatever its state
        (D("m", 1), [I(1, S.ERROR, 600, worker="a")], A_DOWN, PlanOptions(), [("mark-unreachable", 1, "a", 0)]),
        (D("m", 1), [I(1, S.DOWNLOADING, 5, worker="a")], A_DOWN, PlanOptions(), [("mark-unreachable", 1, "a", 0)]),
        # not restarted while being deleted, nor before it was ever placed
        (D("m", 1, deleting=True), [I(1, S.ERROR, 600, worker="a", deleting=True)], UP, PlanOptions(),
         [("stop", 1, "a", 0)]),
        (D("m", 1), [I(1, S.ERROR, 600)], UP, PlanOptions(), []),
        # stable window 600 s: RUNNING for 599 s keeps restart_count 4, for 600 s it is reset
        (D("m", 1), [I(1, S.RUNNING, worker="a", restart_count=4, running_since=NOW - timedelta(seconds=599))],
         UP, PlanOptions(), []),
        (D("m", 1), [I(1, S.RUNNING, worker="a", restart_count=4, running_since=NOW - timedelta(seconds=600))],
         UP, PlanOptions(), [("reset-backoff", 1, "a", 0)]),
        # nothing to reset at 0
        (D("m", 1), [I(1, S.RUNNING, worker="a", running_since=NOW - timedelta(hours=5))], UP, PlanOptions(), []),
        # lost worker a (last heartbeat 95 s ago, grace 300 s): UNREACHABLE waits; a silent 300 s: rescheduled
        (D("m", 1), [I(1, S.UNREACHABLE, 95, worker="a")], A_DOWN, PlanOptions(), []),
        (D("m", 1), [I(1, S.UNREACHABLE, 300, worker="a")], A_GONE, PlanOptions(), [("reschedule", 1, "a", 0)]),
        # … a distributed one whose part worker is gone, too
        (D("m", 1), [I(1, S.UNREACHABLE, 300, worker="b", part_workers=("a",))], A_GONE, PlanOptions(),
         [("reschedule", 1, "a", 0)]),
        # … but never one whose GPUs were chosen by hand
        (D("m", 1), [I(1, S.UNREACHABLE, 300, worker="a", pinned=True)], A_GONE, PlanOptions(), []),
        # a removed worker (`workers rm`): UNREACHABLE at once, rescheduled without waiting for the grace
        (D("m", 1), [I(1, S.RUNNING, worker="x")], UP, PlanOptions(), [("mark-unreachable", 1, "x", 0)]),
        (D("m", 1), [I(1, S.UNREACHABLE, worker="x")], UP, PlanOptions(), [("reschedule", 1, "x", 0)]),
        # removing an instance on a lost worker completes at once: forgotten, nothing to stop
        (D("m", 0), [I(1, S.UNREACHABLE, worker="a")], A_DOWN, PlanOptions(),
         [("mark-for-removal", 1, None, 0), ("forget", 1, "a", 0)]),
        # … a deleted deployment goes in the same plan
        (D("m", 1, deleting=True), [I(1, S.UNREACHABLE, worker="a")], A_DOWN, PlanOptions(),
         [("mark-for-removal", 1, None, 0), ("forget", 1, "a", 0), ("forget-deployment", None, None, 0)]),
        # … distributed with only the part worker lost: stopped on the main worker (forgotten once stopped)
        (D("m", 0), [I(1, S.UNREACHABLE, worker="b", part_workers=("a",))], A_DOWN, PlanOptions(),
         [("mark-for-removal", 1, None, 0), ("stop", 1, "b", 0)]),
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
    schedule, restart = plan(D("m", 1), [I(1, S.ERROR, 45, worker="a", restart_count=2)], UP, NOW).actions
    assert schedule == Action(K.SCHEDULE_RESTART, instance=1, worker="a", at=NOW - timedelta(seconds=25),
                              reason="restart 3 after a 20 s back-off")  # failed at NOW − 45 s, + 20 s
    assert restart == Action(K.RESTART, instance=1, worker="a",
                             reason="failed 45 s ago; restart 3 due 2026-12-05T11:59:35+00:00")
    looping = plan(D("m", 1), [I(1, S.ERROR, 0, worker="a", restart_count=3)], UP, NOW).actions[0]
    assert looping.reason == "restart 4 after a 40 s back-off; crash-looping"
    pinned = plan(D("m", 1), [I(1, S.RUNNING, worker="a", pinned=True)], A_DOWN, NOW).actions[0]
    assert pinned.reason.endswith("its GPUs were chosen by hand (--gpu), so it is not moved and waits "
                                  "for the worker")
    gone = plan(D("m", 1), [I(1, S.UNREACHABLE, worker="a")], A_GONE, NOW).actions[0]
    assert gone.reason == "worker a silent for 300 s (grace 300 s); placing it on another worker"
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
    ("restart_count", "delay_s"),
    [
        (0, 0),  # the first restart at once
        (1, 10),  # 10 × 2⁰
        (2, 20),  # 10 × 2¹
        (3, 40),  # 10 × 2²: "restarting in 40 s, attempt 4"
        (4, 80),
        (5, 160),
        (6, 300),  # 10 × 2⁵ = 320 → capped at 300
        (40, 300),  # no overflow however long it loops
    ],
)
def test_backoff_schedule(restart_count: int, delay_s: float) -> None:
    assert restart_delay_seconds(restart_count) == delay_s


def test_compressed_clock_keeps_the_shape() -> None:
    fast = Timing().scaled(0.01)  # what GPUFLEET_TIME_SCALE=0.01 gives the fault suite
    assert [restart_delay_seconds(n, fast) for n in range(8)] == pytest.approx([0, 0.1, 0.2, 0.4, 0.8, 1.6, 3, 3])
    assert fast.stable_window_s == pytest.approx(6.0) and fast.lost_grace_s == pytest.approx(3.0)
    with pytest.raises(ValueError, match="time scale must be > 0"):
        Timing().scaled(0)
    with pytest.raises(ValueError, match="restart_count must be >= 0"):
        restart_delay_seconds(-1)


@pytest.mark.parametrize(("restart_count", "looping"), [(0, False), (2, False), (3, True), (9, True)])
def test_crash_looping_after_three_restarts_without_a_stable_window(restart_count: int, looping: bool) -> None:
    assert crash_looping(restart_count) is looping


def test_timing_is_a_plan_input() -> None:
    """The same failure, on the compressed clock: restart 2 is due 0.1 s after it failed."""
    fast = Timing().scaled(0.01)
    failed = [I(1, S.ERROR, 0.05, worker="a", restart_count=1)]
    assert steps(plan(D("m", 1), failed, UP, NOW, timing=fast)) == [("schedule-restart", 1, "a", 0)]
    failed = [I(1, S.ERROR, 0.1, worker="a", restart_count=1)]
    assert [a.kind for a in plan(D("m", 1), failed, UP, NOW, timing=fast).actions] == [K.SCHEDULE_RESTART, K.RESTART]
