"""gpufleet's use of Prefect: the work pool, queue names, deployments and triggering.

Every operation is a Prefect deployment on one work pool; the control queue is
served by the gpufleet server, each node serves `node-<name>`. Deployments are
declared in `prefect.yaml` and applied from it, so the UI, the API and gpufleet
all run the same thing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import yaml

from gpufleet.prefect_layer import prefect_layer

log = logging.getLogger(__name__)

POOL = "gpufleet"
WORKER_TYPE = "gpufleet"
CONTROL_QUEUE = "control"
DEPLOYMENT = "gpufleet"
REPO_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = REPO_ROOT / "prefect.yaml"


def node_queue(worker: str) -> str:
    return f"node-{worker}"


def node_run_name(operation: str, worker: str, instance_ids: Iterable[int] | None) -> str:
    """``serve-instances node-a: 7, 8``: a node-local run's name, given when it is created (a run
    its node never begins keeps it) and again when it begins."""
    return f"{operation} {worker}: {', '.join(str(i) for i in instance_ids or [])}"


def deployment_name(flow_name: str) -> str:
    return f"{flow_name}/{DEPLOYMENT}"


@dataclass(frozen=True)
class DeclaredDeployment:
    name: str
    entrypoint: str
    work_queue: str
    description: str
    tags: list[str]

    def load_flow(self) -> Any:
        return prefect_layer().load_flow(self.entrypoint)


def declared_deployments(path: Path = PREFECT_YAML) -> list[DeclaredDeployment]:
    doc = yaml.safe_load(path.read_text())
    result = []
    for d in doc["deployments"]:
        result.append(
            DeclaredDeployment(
                name=d["name"],
                entrypoint=d["entrypoint"],
                work_queue=d["work_pool"]["work_queue_name"],
                description=d.get("description", ""),
                tags=list(d.get("tags", [])),
            )
        )
    return result


async def ensure_pool(client: Any) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    try:
        await client.create_work_pool(
            WorkPoolCreate(
                name=POOL,
                type=WORKER_TYPE,
                base_job_template=prefect_layer().worker_class.get_default_base_job_template(),
            )
        )
    except ObjectAlreadyExists:
        pass


async def ensure_queue(client: Any, queue: str) -> None:
    from prefect.exceptions import ObjectAlreadyExists

    try:
        await client.create_work_queue(name=queue, work_pool_name=POOL)
    except ObjectAlreadyExists:
        pass


async def apply_deployments(client: Any) -> list[str]:
    """Create or update every deployment of prefect.yaml, with typed parameter schemas,
    and register gpufleet's block types so they show in the UI."""
    await ensure_pool(client)
    for block_type in prefect_layer().block_types:
        await block_type.aregister_type_and_schema(client=client)
    names = []
    for decl in declared_deployments():
        fl = decl.load_flow()
        await ensure_queue(client, decl.work_queue)
        fields: dict[str, Any] = dict(
            entrypoint=decl.entrypoint, work_pool_name=POOL, work_queue_name=decl.work_queue,
            description=decl.description, tags=decl.tags,
            parameter_openapi_schema=fl.parameters.model_dump(mode="json"),
            path=str(REPO_ROOT), enforce_parameter_schema=True,
        )
        existing = await _existing_deployment_id(client, f"{fl.name}/{decl.name}")
        if existing is not None:
            # an update, not Prefect's create-or-replace: that would delete the deployment's
            # schedules (gpufleet's schedule rules and any made in the Prefect UI)
            from prefect.client.schemas.actions import DeploymentUpdate

            await client.update_deployment(existing, DeploymentUpdate(**fields))
        else:
            flow_id = await client.create_flow_from_name(fl.name)
            await client.create_deployment(flow_id=flow_id, name=decl.name, **fields)
        names.append(f"{fl.name}/{decl.name}")
    return names


async def _existing_deployment_id(client: Any, name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return (await client.read_deployment_by_name(name)).id
    except ObjectNotFound:
        return None


def flow_run_url(flow_run_id: str) -> str | None:
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None
