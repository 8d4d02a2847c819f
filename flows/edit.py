"""Flow `edit`: what follows a recorded edit.

The server's PATCH records the new configuration (and, for ``--rollout``, that a rollout
runs); this flow makes it happen. Without a rollout that is one converge: running instances
keep the configuration they were created with, and a policy (restart on error, lost-worker
grace) applies at once. With one, it converges round after round — the plan creates new
instances beside the old ones (at most ``max_unavailable`` at a time), each serve run waits
until its instance is RUNNING, and only then does the plan mark an old one for removal —
until the plan says the rollout is done or stopped (a new instance failed: the old ones keep
serving, and this run fails with the reason). The rollout's state lives in the database, so a
server restart does not lose it: the controller re-drives a rollout whose run stopped.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from flows._converge import converge
from tasks.server import read_deployment

#: Pause between rounds in which nothing happened (an instance still loading, placed elsewhere).
IDLE_PAUSE_S = 1.0


class RolloutStopped(RuntimeError):
    """A new instance failed; the rollout stopped and the old instances keep serving."""


class EditReport(BaseModel):
    deployment: str
    rollout: bool
    status: str = ""
    rounds: int = 0


@flow(name="edit")
def edit(name: str, rollout: bool = False,
         timeout_s: Annotated[float, Field(gt=0, le=7 * 24 * 3600, description="how long a rollout may take")] = 3600.0,
         ) -> EditReport:
    log = get_run_logger()
    report = EditReport(deployment=name, rollout=rollout)
    converge(name)
    report.rounds = 1
    deadline = time.monotonic() + timeout_s
    dep = read_deployment(name)
    while rollout and dep.rolling_out:
        if time.monotonic() > deadline:
            raise TimeoutError(f"rollout of {name} not done after {timeout_s:g} s: {dep.rollout_status}; "
                               "the server keeps driving it")
        step = converge(name)
        report.rounds += 1
        if not (step.created or step.removed or step.node_runs):
            time.sleep(IDLE_PAUSE_S)
        dep = read_deployment(name)
        log.info("%s", dep.rollout_status)
    report.status = dep.rollout_status if rollout else f"recorded (generation {dep.generation})"
    if rollout and dep.rollout_status.startswith("rollout stopped"):
        raise RolloutStopped(dep.rollout_status)
    return report
