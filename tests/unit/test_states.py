from __future__ import annotations

import pytest

from gpufleet.core.states import (
    TRANSITIONS,
    DeploymentState,
    InstanceState as S,
    InvalidTransition,
    can_transition,
    check_transition,
    summarize,
)


def test_every_state_has_transitions_defined() -> None:
    assert set(TRANSITIONS) == set(S)


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (S.PENDING, S.ANALYZING, True),  # deploy flow starts analysis
        (S.ANALYZING, S.SCHEDULED, True),  # placed
        (S.ANALYZING, S.PENDING, True),  # no worker fits: wait with a reason
        (S.SCHEDULED, S.STARTING, True),  # local path: nothing to download
        (S.SCHEDULED, S.DOWNLOADING, True),
        (S.DOWNLOADING, S.STARTING, True),
        (S.STARTING, S.RUNNING, True),  # health check passed
        (S.RUNNING, S.ERROR, True),  # backend died
        (S.ERROR, S.STARTING, True),  # restart
        (S.RUNNING, S.UNREACHABLE, True),  # worker lost
        (S.UNREACHABLE, S.RUNNING, True),  # worker back, backend alive
        (S.RUNNING, S.RUNNING, True),  # same state: message refresh
        (S.PENDING, S.RUNNING, False),  # must be placed and started first
        (S.RUNNING, S.PENDING, False),
        (S.SCHEDULED, S.RUNNING, False),  # must start before it runs
        (S.ERROR, S.RUNNING, False),  # a restart goes through STARTING
    ],
)
def test_transitions(current: S, new: S, allowed: bool) -> None:
    assert can_transition(current, new) is allowed
    if allowed:
        check_transition(current, new)
    else:
        with pytest.raises(InvalidTransition, match=f"from {current} to {new}"):
            check_transition(current, new)


@pytest.mark.parametrize(
    ("replicas", "states", "expected"),
    [
        (0, [], DeploymentState.STOPPED),
        (2, [S.RUNNING, S.RUNNING], DeploymentState.RUNNING),
        (2, [S.RUNNING, S.STARTING], DeploymentState.DEPLOYING),
        (2, [S.RUNNING], DeploymentState.DEPLOYING),  # one replica still to be created
        (2, [S.RUNNING, S.ERROR], DeploymentState.DEGRADED),
        (1, [S.UNREACHABLE], DeploymentState.DEGRADED),
        (0, [S.RUNNING], DeploymentState.DEPLOYING),  # scaling down, not yet stopped
    ],
)
def test_summarize(replicas: int, states: list[S], expected: DeploymentState) -> None:
    assert summarize(replicas, states) == expected
