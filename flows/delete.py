"""Flows `delete` (a deployment) and `delete-instance` (one instance)."""

from __future__ import annotations

from prefect import flow

from flows._converge import ConvergeReport, converge
from flows._names import named, nothing_to_do, unless_gone
from tasks.server import mark_deployment_deleting, mark_removing


@flow(name="delete", flow_run_name=named("delete"))
def delete(name: str) -> ConvergeReport:
    """Every instance is stopped and forgotten, then the deployment itself (by the plan)."""
    def run() -> ConvergeReport:
        mark_deployment_deleting(name)
        return converge(name)

    return unless_gone(f"deployment {name}", run)


@flow(name="delete-instance", flow_run_name=named("delete-instance", "instance_id"))
def delete_instance(instance_id: int) -> ConvergeReport | None:
    """The instance goes; converging then creates a replacement while the
    deployment still wants that many replicas."""
    inst = mark_removing(instance_id)
    if inst is None:
        return nothing_to_do(f"instance {instance_id} no longer exists; nothing to do")
    return unless_gone(f"deployment {inst.deployment}", lambda: converge(inst.deployment))
