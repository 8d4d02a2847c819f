"""Flow `reconcile`: converge a deployment to its replica count without changing it.
The server's control loop runs it when a deployment stays unconverged (e.g. an
earlier flow run failed half-way)."""

from __future__ import annotations

from prefect import flow

from flows._converge import ConvergeReport, converge
from flows._names import named, unless_gone


@flow(name="reconcile", flow_run_name=named("reconcile"))
def reconcile(name: str) -> ConvergeReport | None:
    return unless_gone(f"deployment {name}", lambda: converge(name))
