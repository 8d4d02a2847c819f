"""Flow `restart`: stop an instance's backend and serve it again on the same placement."""

from __future__ import annotations

from prefect import flow

from flows._converge import run_key
from gpufleet.core.states import InstanceState
from tasks.dispatch import run_on_node, wait_for_node_runs
from tasks.server import read_deployment, read_instance, report_state


@flow(name="restart")
def restart(instance_id: int) -> dict[str, str]:
    inst = read_instance(instance_id)
    if inst is None or inst.deleting:
        return {}
    if inst.worker is None:
        raise ValueError(f"instance {instance_id} is not placed yet; nothing to restart")
    attempt = inst.restart_count + 1
    stop_run = run_on_node("stop-instance", inst.worker, {"instance_id": instance_id}, run_key("restart-stop", inst))
    wait_for_node_runs([stop_run], timeout=120)
    report_state(instance_id, InstanceState.STARTING, f"restarting (attempt {attempt})", restart_count=attempt)
    metadata = read_deployment(inst.deployment).metadata
    serve_run = run_on_node(
        "serve-instance",
        inst.worker,
        {"instance_id": instance_id, "metadata": metadata.model_dump(mode="json") if metadata else None},
        run_key("serve", inst.model_copy(update={"restart_count": attempt})),
    )
    return wait_for_node_runs([serve_run])
