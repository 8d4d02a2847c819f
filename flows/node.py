"""Node-local flows, routed to `node-<worker>` queues: serve and stop instances.

One run per node and operation, whatever the number of instances: each Prefect
flow run costs the Prefect server a dozen writes, so ten replicas on one node
are ten task chains in one run, not ten runs. Steps run concurrently across
instances; each instance succeeds or fails on its own.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from gpufleet.core.schemas import InstanceView, ModelMetadata
from gpufleet.core.states import InstanceState
from gpufleet.node import backends
from gpufleet.node.context import current_node
from tasks.node import health_check, launch_instance, pull_weights, stop_instance
from tasks.server import read_instance, report_state


def _fail(inst: InstanceView, exc: BaseException) -> None:
    """Record what failed and where; stop whatever was started."""
    backends.stop(inst.id, current_node(), grace=5)
    message = str(exc) if isinstance(exc, backends.BackendFailed) else f"{type(exc).__name__}: {exc}"
    report_state(inst.id, InstanceState.ERROR, message)


@flow(name="serve-instances")
def serve_instances(instance_ids: list[int], metadata: ModelMetadata | None = None) -> dict[int, str]:
    """pull weights → launch → health check → RUNNING for each instance; a failure
    puts that instance in ERROR with what failed, where, and the backend's last log
    lines. Fails (after reporting) if any instance failed."""
    node = current_node().name
    instances = [i for i in (read_instance(iid) for iid in instance_ids) if i is not None and not i.deleting]
    outcome: dict[int, str] = {iid: "gone" for iid in instance_ids}

    pulls = {i.id: pull_weights.submit(i) for i in instances}
    launches = {}
    for inst in instances:
        pulls[inst.id].wait()
        if pulls[inst.id].state.is_completed():
            launches[inst.id] = launch_instance.submit(inst, pulls[inst.id].result(), metadata)
        else:
            _fail(inst, pulls[inst.id].result(raise_on_failure=False))
            outcome[inst.id] = "error"
    healths = {}
    for inst in instances:
        if inst.id not in launches:
            continue
        future = launches[inst.id]
        future.wait()
        if not future.state.is_completed():
            _fail(inst, future.result(raise_on_failure=False))
            outcome[inst.id] = "error"
            continue
        record = future.result()
        report_state(inst.id, InstanceState.STARTING,
                     f"backend started on {node} (pid {record.pid}, port {record.port}); waiting for health",
                     port=record.port, pid=record.pid)
        healths[inst.id] = (record, health_check.submit(record))
    for inst in instances:
        if inst.id not in healths:
            continue
        record, future = healths[inst.id]
        future.wait()
        if future.state.is_completed():
            report_state(inst.id, InstanceState.RUNNING, f"serving on {node}:{record.port}",
                         port=record.port, pid=record.pid)
            outcome[inst.id] = "running"
        else:
            _fail(inst, future.result(raise_on_failure=False))
            outcome[inst.id] = "error"
    failed = [iid for iid, o in outcome.items() if o == "error"]
    if failed:
        raise RuntimeError(f"instances {failed} failed on {node}; see their state messages")
    get_run_logger().info("serving on %s: %s", node, outcome)
    return outcome


@flow(name="stop-instances")
def stop_instances(instance_ids: list[int]) -> dict[int, bool]:
    """Stop these instances' backends on this node, all at once."""
    futures = {iid: stop_instance.submit(iid) for iid in instance_ids}
    return {iid: f.result() for iid, f in futures.items()}
