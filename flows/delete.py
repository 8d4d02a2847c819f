"""Flows `delete` (a deployment) and `delete-instance` (one instance)."""

from __future__ import annotations

from prefect import flow

from flows._converge import ConvergeReport, converge
from tasks.server import mark_deployment_deleting, mark_removing


@flow(name="delete")
def delete(name: str) -> ConvergeReport:
    """Every instance is stopped and forgotten, then the deployment itself (by the plan)."""
    mark_deployment_deleting(name)
    return converge(name)


@flow(name="delete-instance")
def delete_instance(instance_id: int) -> ConvergeReport | None:
    """The instance goes; converging then creates a replacement while the
    deployment still wants that many replicas."""
    inst = mark_removing(instance_id)
    if inst is None:
        return None
    return converge(inst.deployment)
