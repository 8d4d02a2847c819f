"""Flow `restart-deployment`: restart a deployment's replicas one at a time (a scheduled
restart, `gpufleet schedule add NAME --cron … --restart`).

Each RUNNING instance is restarted by a `restart` subflow run on its current placement, and
the next one starts only once it is RUNNING again: a deployment with more than one replica
never has zero RUNNING. If an instance does not come back, the run stops there and fails
with why, leaving the other replicas serving (the controller restarts the failed one with
its back-off, as for any failure).
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from flows._names import named, nothing_to_do
from flows.restart import restart
from gpufleet.client import ApiError
from gpufleet.core.states import InstanceState
from tasks.server import read_deployment, read_deployment_instances, read_instance

#: How long one instance may take to be RUNNING again after its restart run.
BACK_RUNNING_TIMEOUT_S = 600.0


def wait_running(instance_id: int, timeout: float = BACK_RUNNING_TIMEOUT_S) -> str | None:
    """None once the instance is RUNNING; otherwise why not (its state and message)."""
    deadline = time.monotonic() + timeout
    while True:
        inst = read_instance(instance_id)
        if inst is None:
            return f"instance {instance_id} was deleted meanwhile"
        if inst.state == InstanceState.RUNNING:
            return None
        if inst.state == InstanceState.ERROR or time.monotonic() > deadline:
            return f"instance {instance_id} is {inst.state.value}: {inst.state_message}"
        time.sleep(0.5)


@flow(name="restart-deployment", flow_run_name=named("restart-deployment"))
def restart_deployment(name: str) -> list[int]:
    try:
        read_deployment(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
        return nothing_to_do(f"deployment {name} no longer exists; nothing to restart")
    running = sorted(i.id for i in read_deployment_instances(name)
                     if i.state == InstanceState.RUNNING and not i.deleting)
    if not running:
        return nothing_to_do(f"deployment {name} has no RUNNING replica; nothing to restart")
    log = get_run_logger()
    done: list[int] = []
    for iid in running:
        log.info("restarting instance %d (%d of %d); the others keep serving", iid, len(done) + 1, len(running))
        restart(iid)
        why = wait_running(iid)
        if why is not None:
            raise RuntimeError(f"stopped after restarting {done + [iid]}: {why}; "
                               f"instances {[i for i in running if i not in done and i != iid]} were not restarted")
        done.append(iid)
    log.info("restarted %s of %s one at a time", done, name)
    return done
