"""Flow `reconcile`: converge a deployment to its replica count without changing it.
The server's control loop runs it when a deployment stays unconverged (e.g. an
earlier flow run failed half-way)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows._converge import ConvergeReport, converge
from gpufleet.client import ApiError


@flow(name="reconcile")
def reconcile(name: str) -> ConvergeReport | None:
    try:
        return converge(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
        get_run_logger().info("deployment %s no longer exists; nothing to reconcile", name)
        return None
