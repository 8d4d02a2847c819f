"""Replica planning: compare the desired replica count with the instances that exist."""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.core.states import REMOVAL_ORDER, InstanceState


@dataclass(frozen=True)
class InstanceSummary:
    id: int
    state: InstanceState
    deleting: bool = False


@dataclass(frozen=True)
class ReplicaPlan:
    create: int
    remove: tuple[int, ...]

    @property
    def empty(self) -> bool:
        return self.create == 0 and not self.remove


def removal_key(inst: InstanceSummary) -> tuple[int, int]:
    """Worst first: failed and unreachable before healthy; newest first within a state,
    because an older healthy instance has proven itself and may hold warm caches."""
    return (REMOVAL_ORDER.index(inst.state), -inst.id)


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
