"""Instance and deployment states: defined once, with the transitions allowed between them.

Every state change in gpufleet goes through :func:`check_transition`, so a state
can only move along the edges below; the server rejects anything else with 409.
"""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    """Life cycle of one model instance (one replica of a deployment)."""

    # Created by the server to satisfy the replica count; nothing decided yet.
    PENDING = "PENDING"
    # The deploy flow is reading the model's metadata and estimating its memory.
    ANALYZING = "ANALYZING"
    # Placed: a worker and GPUs (or CPU) are chosen and their memory is claimed.
    SCHEDULED = "SCHEDULED"
    # The node is fetching the model weights into its local cache.
    DOWNLOADING = "DOWNLOADING"
    # The backend process is launched; waiting for its health endpoint.
    STARTING = "STARTING"
    # The backend answers its health endpoint and serves requests.
    RUNNING = "RUNNING"
    # Something failed; the state message says what and where.
    ERROR = "ERROR"
    # The instance's worker stopped sending heartbeats; its backend may still run.
    UNREACHABLE = "UNREACHABLE"


S = InstanceState

#: Allowed transitions. Restart moves RUNNING/ERROR/UNREACHABLE back to
#: DOWNLOADING or STARTING on the same placement; a failed placement drops an
#: instance back to PENDING with the reason in its message.
TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    S.PENDING: frozenset({S.ANALYZING, S.SCHEDULED, S.ERROR}),
    S.ANALYZING: frozenset({S.PENDING, S.SCHEDULED, S.ERROR}),
    # back to PENDING: the placement was released (its worker was lost before starting it)
    S.SCHEDULED: frozenset({S.PENDING, S.DOWNLOADING, S.STARTING, S.ERROR, S.UNREACHABLE}),
    S.DOWNLOADING: frozenset({S.STARTING, S.ERROR, S.UNREACHABLE}),
    S.STARTING: frozenset({S.RUNNING, S.ERROR, S.UNREACHABLE}),
    S.RUNNING: frozenset({S.DOWNLOADING, S.STARTING, S.ERROR, S.UNREACHABLE}),
    # to UNREACHABLE: its worker was lost (it cannot be restarted there meanwhile)
    S.ERROR: frozenset({S.PENDING, S.SCHEDULED, S.DOWNLOADING, S.STARTING, S.UNREACHABLE}),
    # to PENDING: rescheduled after the lost-worker grace (its placement released)
    S.UNREACHABLE: frozenset({S.PENDING, S.RUNNING, S.STARTING, S.DOWNLOADING, S.ERROR}),
}

#: States in which an instance holds (or is about to hold) a backend process.
ACTIVE_ON_NODE = frozenset({S.DOWNLOADING, S.STARTING, S.RUNNING, S.UNREACHABLE})

#: Order used to pick instances to remove on scale-down: worst first.
REMOVAL_ORDER: tuple[InstanceState, ...] = (
    S.ERROR,
    S.UNREACHABLE,
    S.PENDING,
    S.ANALYZING,
    S.SCHEDULED,
    S.DOWNLOADING,
    S.STARTING,
    S.RUNNING,
)


class InvalidTransition(ValueError):
    """Raised when a state change is not one of :data:`TRANSITIONS`."""


def can_transition(current: InstanceState, new: InstanceState) -> bool:
    """Same-state updates are allowed (they refresh the message, e.g. download %)."""
    return current == new or new in TRANSITIONS[current]


def check_transition(current: InstanceState, new: InstanceState) -> None:
    if not can_transition(current, new):
        allowed = ", ".join(sorted(TRANSITIONS[current]))
        raise InvalidTransition(
            f"instance cannot go from {current} to {new}; allowed from {current}: {allowed}"
        )


class DeploymentState(StrEnum):
    """Summary of a deployment, derived from its instances (never stored)."""

    RUNNING = "RUNNING"  # every desired replica is RUNNING
    DEPLOYING = "DEPLOYING"  # replicas are on their way, none failed
    DEGRADED = "DEGRADED"  # some replicas failed or are unreachable
    STOPPED = "STOPPED"  # zero replicas desired and none left


def summarize(replicas: int, states: list[InstanceState]) -> DeploymentState:
    """Derive the deployment state shown by `gpufleet ls` from its instances' states."""
    if replicas == 0 and not states:
        return DeploymentState.STOPPED
    if any(s in (S.ERROR, S.UNREACHABLE) for s in states):
        return DeploymentState.DEGRADED
    running = sum(1 for s in states if s == S.RUNNING)
    if running == replicas and len(states) == replicas:
        return DeploymentState.RUNNING
    return DeploymentState.DEPLOYING
