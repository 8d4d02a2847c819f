"""Flow `restart`: stop an instance's backend and serve it again on the same placement."""

from __future__ import annotations

from prefect import flow

from flows._converge import dispatch, serve
from flows._names import named, nothing_to_do
from gpufleet.core.plan import PLANNED_STOP
from gpufleet.core.schemas import AppliedPlan, NodeAction
from gpufleet.core.states import InstanceState
from tasks.dispatch import wait_for_node_runs
from tasks.server import read_deployment, read_instance, report_state, worker_addresses


@flow(name="restart", flow_run_name=named("restart instance", "instance_id"))
def restart(instance_id: int) -> dict[str, str]:
    inst = read_instance(instance_id)
    if inst is None or inst.deleting:
        return nothing_to_do(f"instance {instance_id} no longer exists or is being deleted; nothing to restart")
    if inst.worker is None:
        raise ValueError(f"instance {instance_id} is not placed yet; nothing to restart")
    # a backend its node stopped on purpose (`gpufleet down`) is started again without counting a restart
    planned = inst.state == InstanceState.ERROR and inst.state_message.startswith(PLANNED_STOP)
    attempt = inst.restart_count + (0 if planned else 1)
    parts = inst.placement.workers()[1:] if inst.placement else []
    addresses = worker_addresses()
    why = f"restart {attempt}"
    stops = [NodeAction(kind="stop", instance=inst.id, worker=w, reason=why) for w in [inst.worker, *parts]]
    wait_for_node_runs(dispatch("stop", stops, {inst.id: inst}, addresses), timeout=120)
    failure = inst.state_message.splitlines()[0] if inst.state == InstanceState.ERROR and inst.state_message else ""
    report_state(instance_id, InstanceState.STARTING,
                 ("starting again" if planned else f"restarting (attempt {attempt})")
                 + (f" after: {failure}" if failure else ""), restart_count=attempt)
    restarted = inst.model_copy(update={"restart_count": attempt})
    plan = AppliedPlan(
        deployment=inst.deployment, exists=True, instances=[restarted], worker_addresses=addresses,
        metadata=read_deployment(inst.deployment).metadata,
        node_actions=[*(NodeAction(kind="serve-rpc", instance=inst.id, worker=w, reason=why) for w in parts),
                      NodeAction(kind="serve", instance=inst.id, worker=inst.worker, reason=why)],
    )
    return wait_for_node_runs(serve(plan))
