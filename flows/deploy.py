"""Flow `deploy`: record a deployment and bring up its replicas."""

from __future__ import annotations

from prefect import flow

from flows._artifacts import publish
from flows._cancel import cancellable
from flows._converge import ConvergeReport, converge
from flows._names import deploy_name
from gpufleet.core.schemas import DeploymentSpec
from tasks.server import register_deployment


@flow(name="deploy", flow_run_name=deploy_name, log_prints=True)
def deploy(spec: DeploymentSpec) -> ConvergeReport:
    """Idempotent: deploying the same spec twice changes nothing; a different spec
    under an existing name is refused (use scale / edit)."""
    def run() -> ConvergeReport:
        register_deployment(spec)
        report = converge(spec.name)
        publish(spec.name, report)
        return report

    return cancellable(run)
