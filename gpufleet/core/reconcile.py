"""Replica planning: compare the desired replica count with the instances that exist."""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.core.states import REMOVAL_ORDER, InstanceState

UNHEALTHY = (InstanceState.ERROR, InstanceState.UNREACHABLE)


@dataclass(frozen=True)
class InstanceSummary:
    """What scale-down needs to know of an instance: its state, whether it holds a
    placement, whether layers of it run on the CPU, and its placement score."""

    id: int
    state: InstanceState
    deleting: bool = False
    placed: bool = False
    offloaded: bool = False
    score: float = 0.0


@dataclass(frozen=True)
class ReplicaPlan:
    create: int
    remove: tuple[int, ...]

    @property
    def empty(self) -> bool:
        return self.create == 0 and not self.remove


def removal_key(inst: InstanceSummary) -> tuple[int, int, int, float, int, int]:
    """Worst first:

    1. unhealthy: ERROR, then UNREACHABLE;
    2. not placed yet (nothing to stop, nothing to lose);
    3. partially offloaded to the CPU (slow, and holding RAM);
    4. lower placement score (the placement the strategy likes least);
    5. less far along (STARTING before RUNNING), then newest first — an older
       healthy instance has proven itself and may hold warm caches.
    """
    unhealthy = UNHEALTHY.index(inst.state) if inst.state in UNHEALTHY else len(UNHEALTHY)
    return (unhealthy, int(inst.placed), int(not inst.offloaded), inst.score,
            REMOVAL_ORDER.index(inst.state), -inst.id)


def plan_replicas(desired: int, instances: list[InstanceSummary]) -> ReplicaPlan:
    """Instances already being deleted do not count towards the replica count."""
    if desired < 0:
        raise ValueError(f"replicas must be >= 0, got {desired}")
    live = [i for i in instances if not i.deleting]
    if len(live) < desired:
        return ReplicaPlan(create=desired - len(live), remove=())
    surplus = len(live) - desired
    worst_first = sorted(live, key=removal_key)
    return ReplicaPlan(create=0, remove=tuple(i.id for i in worst_first[:surplus]))


def restart_delay_seconds(restart_count: int, base: float = 10.0, cap: float = 300.0) -> float:
    """Exponential backoff before restarting a failed instance: base × 2^n, capped at 5 minutes."""
    if restart_count < 0:
        raise ValueError("restart_count must be >= 0")
    return min(cap, base * (2 ** min(restart_count, 32)))
