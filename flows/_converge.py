"""The recipe shared by deploy, scale, stop, start, delete and delete_instance:
bring a deployment's instances to its replica count."""

from __future__ import annotations

from uuid import UUID

from datetime import datetime, timezone

from prefect import get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from gpufleet.core.schemas import InstanceView
from gpufleet.core.states import InstanceState
from tasks._connection import connect
from tasks.dispatch import run_on_node, wait_for_node_runs
from tasks.model import estimate_resources, fetch_metadata
from tasks.scheduling import select_gpus
from tasks.server import (
    plan_replicas,
    read_deployment,
    read_instance,
    remove_instance_record,
    report_state,
)

STOP_TIMEOUT_S = 120.0


STALE_SCHEDULED_S = 30.0


def run_key(operation: str, inst: InstanceView) -> str:
    """Idempotency key of a node run: a retried task within this flow run finds the
    run it already created; another flow run (a re-drive after a failure) or a later
    instance never matches it. Serving is idempotent on the node anyway."""
    return f"{operation}-{inst.name}-{inst.created_at.timestamp()}-{inst.restart_count}-{flow_run.id}"


def stale_scheduled(name: str, exclude: set[int]) -> list[InstanceView]:
    """Instances placed long ago but never started (their serve run was lost or failed)."""
    now = datetime.now(timezone.utc)
    with connect() as c:
        instances = c.list_instances(deployment=name)
    return [
        i for i in instances
        if i.state == InstanceState.SCHEDULED and not i.deleting and i.worker and i.id not in exclude
        and (now - i.updated_at.replace(tzinfo=i.updated_at.tzinfo or timezone.utc)).total_seconds() > STALE_SCHEDULED_S
    ]


class ConvergeReport(BaseModel):
    deployment: str
    created: list[int]
    placed: dict[int, str]  # instance id -> worker
    unplaced: dict[int, str]  # instance id -> reason
    removed: list[int]
    node_runs: dict[str, str]  # flow run id -> final state


def remove_instances(instance_ids: list[int]) -> list[int]:
    """Stop each instance's backend on its node (all at once), then drop its record
    (releasing its claims)."""
    instances = [i for i in (read_instance(iid) for iid in instance_ids) if i is not None]
    stops = [
        run_on_node.submit("stop-instance", i.worker, {"instance_id": i.id}, run_key("stop", i))
        for i in instances
        if i.worker is not None
    ]
    if stops:
        results = wait_for_node_runs([f.result() for f in stops], timeout=STOP_TIMEOUT_S)
        failed = {r: s for r, s in results.items() if s != "Completed"}
        if failed:
            get_run_logger().warning(
                "stop runs did not complete: %s; the node stops unknown backends when it reconnects",
                failed,
            )
    for iid in instance_ids:
        remove_instance_record(iid)
    return instance_ids


def converge(name: str) -> ConvergeReport:
    plan = plan_replicas(name)
    removed = remove_instances(plan.removing) if plan.removing else []
    placed: dict[int, str] = {}
    unplaced: dict[int, str] = {}
    serve_runs: list[UUID] = []
    if plan.to_place:
        dep = read_deployment(name)
        for iid in plan.to_place:
            report_state(iid, InstanceState.ANALYZING, "reading model metadata and estimating memory")
        metadata = fetch_metadata(dep.source)
        estimate = estimate_resources(metadata, dep.config())
        serves = []
        for iid in plan.to_place:
            inst = select_gpus(iid, estimate)
            if inst.state != InstanceState.SCHEDULED or inst.worker is None:
                unplaced[iid] = inst.state_message
                continue
            placed[iid] = inst.worker
            params = {"instance_id": iid, "metadata": metadata.model_dump(mode="json") if metadata else None}
            serves.append(run_on_node.submit("serve-instance", inst.worker, params, run_key("serve", inst)))
        serve_runs = [f.result() for f in serves]
    for inst in stale_scheduled(name, exclude=set(placed)):
        get_run_logger().info("instance %s was placed but never started; dispatching it again", inst.name)
        params = {"instance_id": inst.id, "metadata": None}
        serve_runs.append(run_on_node("serve-instance", inst.worker, params, run_key("serve", inst)))
    node_runs = wait_for_node_runs(serve_runs) if serve_runs else {}
    return ConvergeReport(
        deployment=name,
        created=plan.created,
        placed=placed,
        unplaced=unplaced,
        removed=removed,
        node_runs=node_runs,
    )
