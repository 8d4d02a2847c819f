"""Flows `delete` (a deployment) and `delete-instance` (one instance)."""

from __future__ import annotations

from prefect import flow

from flows._converge import ConvergeReport, converge
from tasks.server import mark_deployment_deleting, mark_removing, remove_deployment_record


@flow(name="delete")
def delete(name: str) -> ConvergeReport:
    mark_deployment_deleting(name)
    report = converge(name)
    remove_deployment_record(name)
    return report


@flow(name="delete-instance")
def delete_instance(instance_id: int) -> ConvergeReport | None:
    """The instance goes; converging then creates a replacement while the
    deployment still wants that many replicas."""
    inst = mark_removing(instance_id)
    if inst is None:
        return None
    return converge(inst.deployment)
