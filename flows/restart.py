"""Flow `restart`: stop an instance's backend and serve it again on the same placement."""

from __future__ import annotations

from prefect import flow

from flows._converge import dispatch, serve
from gpufleet.core.states import InstanceState
from tasks.dispatch import wait_for_node_runs
from tasks.server import read_deployment, read_instance, report_state


@flow(name="restart")
def restart(instance_id: int) -> dict[str, str]:
    inst = read_instance(instance_id)
    if inst is None or inst.deleting:
        return {}
    if inst.worker is None:
        raise ValueError(f"instance {instance_id} is not placed yet; nothing to restart")
    attempt = inst.restart_count + 1
    wait_for_node_runs(dispatch("stop-instances", [inst], workers="all"), timeout=120)
    report_state(instance_id, InstanceState.STARTING, f"restarting (attempt {attempt})", restart_count=attempt)
    metadata = read_deployment(inst.deployment).metadata
    restarted = inst.model_copy(update={"restart_count": attempt})
    meta = {"metadata": metadata.model_dump(mode="json") if metadata else None}
    return wait_for_node_runs(serve([restarted], meta))
