from __future__ import annotations

import pytest

from gpufleet.core.reconcile import InstanceSummary as I, plan_replicas, restart_delay_seconds
from gpufleet.core.states import InstanceState as S


@pytest.mark.parametrize(
    ("desired", "instances", "create", "remove"),
    [
        (2, [], 2, ()),  # nothing yet: create both
        (3, [I(1, S.RUNNING)], 2, ()),  # 3 - 1 = 2 to create
        (1, [I(1, S.RUNNING)], 0, ()),  # converged
        (0, [I(1, S.RUNNING), I(2, S.STARTING)], 0, (2, 1)),  # STARTING is worse than RUNNING
        (1, [I(1, S.RUNNING), I(2, S.ERROR), I(3, S.RUNNING)], 0, (2, 3)),  # ERROR first, then newest
        (1, [I(1, S.RUNNING), I(2, S.UNREACHABLE)], 0, (2,)),
        (2, [I(1, S.RUNNING), I(2, S.RUNNING, deleting=True)], 1, ()),  # deleting ones don't count
        (0, [I(5, S.PENDING), I(6, S.RUNNING)], 0, (5, 6)),
    ],
)
def test_plan_replicas(desired: int, instances: list[I], create: int, remove: tuple[int, ...]) -> None:
    plan = plan_replicas(desired, instances)
    assert plan.create == create
    assert plan.remove == remove


def test_negative_replicas_rejected() -> None:
    with pytest.raises(ValueError, match="replicas must be >= 0"):
        plan_replicas(-1, [])


@pytest.mark.parametrize(
    ("restarts", "delay"),
    [(0, 10.0), (1, 20.0), (2, 40.0), (4, 160.0), (5, 300.0), (50, 300.0)],  # 10 × 2^n, capped at 300
)
def test_restart_backoff(restarts: int, delay: float) -> None:
    assert restart_delay_seconds(restarts) == delay


def test_scale_down_order_unhealthy_then_offloaded_then_score() -> None:
    """Worst first: ERROR, UNREACHABLE, unplaced, offloaded, then the lowest placement score."""
    instances = [
        I(1, S.RUNNING, placed=True, score=90.0),
        I(2, S.RUNNING, placed=True, score=40.0),
        I(3, S.RUNNING, placed=True, offloaded=True, score=99.0),
        I(4, S.UNREACHABLE, placed=True, score=99.0),
        I(5, S.ERROR, placed=True, score=99.0),
        I(6, S.PENDING),
    ]
    assert plan_replicas(0, instances).remove == (5, 4, 6, 3, 2, 1)
    assert plan_replicas(4, instances).remove == (5, 4)
