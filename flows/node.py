"""Node-local flows, routed to `node-<worker>` queues: serve and stop one instance."""

from __future__ import annotations

from prefect import flow

from gpufleet.core.schemas import ModelMetadata
from gpufleet.core.states import InstanceState
from gpufleet.node import backends
from gpufleet.node.context import current_node
from tasks.node import health_check, launch_instance, pull_weights, stop_instance
from tasks.server import read_instance, report_state


@flow(name="serve-instance")
def serve_instance(instance_id: int, metadata: ModelMetadata | None = None) -> str:
    """pull weights → launch → health check → RUNNING; any failure → ERROR with
    what failed and where (and the backend's last log lines)."""
    inst = read_instance(instance_id)
    if inst is None or inst.deleting:
        return "instance gone"
    node = current_node().name
    try:
        path = pull_weights(inst)
        record = launch_instance(inst, path, metadata)
        report_state(
            instance_id, InstanceState.STARTING,
            f"backend started on {node} (pid {record.pid}, port {record.port}); waiting for health",
            port=record.port, pid=record.pid,
        )
        health_check(record)
    except backends.BackendFailed as exc:
        backends.stop(instance_id, current_node(), grace=5)
        report_state(instance_id, InstanceState.ERROR, str(exc))
        raise
    report_state(instance_id, InstanceState.RUNNING, f"serving on {node}:{record.port}",
                 port=record.port, pid=record.pid)
    return "running"


@flow(name="stop-instance")
def stop_instance_flow(instance_id: int) -> bool:
    return stop_instance(instance_id)
