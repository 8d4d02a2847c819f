"""`gpufleet edit … --rollout` waits for its rollout: the status line while it runs, the
instances when it is done, and a non-zero exit when it stopped (a new instance failed: the
status says which and why, and the old instances keep serving)."""

from __future__ import annotations

import time
from collections.abc import Callable

from gpufleet.client import GpufleetClient
from gpufleet.core.schemas import DeploymentView

POLL_S = 0.5


class RolloutFailed(RuntimeError):
    pass


def wait_for_rollout(client: GpufleetClient, name: str, timeout: float,
                     say: Callable[[str], None] = print) -> DeploymentView:
    """Poll the deployment until its rollout is over; returns it (RolloutFailed when it
    stopped, TimeoutError when it still runs after ``timeout`` s — it goes on in the server)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        dep = client.get_deployment(name)
        if dep.rollout_status and dep.rollout_status != last:
            say(dep.rollout_status)
            last = dep.rollout_status
        if not dep.rolling_out:
            if dep.rollout_status.startswith("rollout stopped"):
                raise RolloutFailed(dep.rollout_status)
            return dep
        if time.monotonic() > deadline:
            raise TimeoutError(f"the rollout of {name} still runs after {timeout:g} s ({dep.rollout_status}); "
                               "it goes on in the server: `gpufleet ls` and `gpufleet ps NAME` show it")
        time.sleep(POLL_S)
