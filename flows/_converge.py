"""The recipe shared by deploy, scale, stop, start, delete and delete_instance:
bring a deployment's instances to its replica count."""

from __future__ import annotations

from uuid import UUID

import hashlib
from collections import defaultdict
from datetime import datetime, timezone
from typing import Literal

from prefect import get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from gpufleet.core.schemas import InstanceView
from gpufleet.core.states import InstanceState
from tasks._connection import connect
from tasks.dispatch import run_on_node, wait_for_node_runs
from tasks.estimation import estimate_resources
from tasks.metadata import fetch_metadata
from tasks.scheduling import select_gpus
from tasks.server import (
    plan_replicas,
    read_deployment,
    read_instance,
    remove_instance_record,
    report_state,
)

STOP_TIMEOUT_S = 120.0
RPC_START_TIMEOUT_S = 180.0


STALE_SCHEDULED_S = 30.0


def batch_key(operation: str, worker: str, instances: list[InstanceView]) -> str:
    """Idempotency key of a node run: a retried task within this flow run finds the
    run it already created; another flow run (a re-drive after a failure) or other
    instances never match it. Serving is idempotent on the node anyway."""
    incarnations = ",".join(f"{i.name}@{i.created_at.timestamp()}#{i.restart_count}" for i in instances)
    digest = hashlib.sha256(incarnations.encode()).hexdigest()[:16]
    return f"{operation}-{worker}-{digest}-{flow_run.id}"


Workers = Literal["main", "parts", "all"]


def by_worker(instances: list[InstanceView], which: Workers = "main") -> dict[str, list[InstanceView]]:
    """Group instances by the workers that run something for them: the main worker
    (the llama-server), the part workers of distributed instances (RPC servers), or all."""
    groups: dict[str, list[InstanceView]] = defaultdict(list)
    for inst in instances:
        if inst.worker is not None and which != "parts":
            groups[inst.worker].append(inst)
        if inst.placement is not None and which != "main":
            for part in inst.placement.parts:
                groups[part.worker].append(inst)
    return dict(groups)


def dispatch(operation: str, instances: list[InstanceView], extra: dict | None = None,
             workers: Workers = "main") -> list[UUID]:
    """One node run per worker for all of its instances, started concurrently."""
    futures = [
        run_on_node.submit(
            operation, worker, {"instance_ids": [i.id for i in group], **(extra or {})},
            batch_key(operation, worker, group),
        )
        for worker, group in by_worker(instances, workers).items()
    ]
    return [f.result() for f in futures]


def serve(instances: list[InstanceView], extra: dict | None = None) -> list[UUID]:
    """Start instances on their workers; returns the serve runs to wait for.

    A distributed instance's main llama-server connects to its RPC servers as it
    starts, so their node runs (one per part worker) go first and are awaited; an
    instance whose RPC servers failed is in ERROR (the node said why) and is not
    started. Instances on one worker start at once, without waiting for them."""
    plain = [i for i in instances if not (i.placement and i.placement.distributed)]
    spread = [i for i in instances if i.placement and i.placement.distributed]
    runs = dispatch("serve-instances", plain, extra) if plain else []
    if spread:
        parts = dispatch("serve-rpc-servers", spread, workers="parts")
        results = wait_for_node_runs(parts, timeout=RPC_START_TIMEOUT_S)
        if any(state != "Completed" for state in results.values()):
            get_run_logger().warning("RPC server runs did not all complete: %s", results)
        ready = [i for i in spread if (now := read_instance(i.id)) is not None and now.state != InstanceState.ERROR]
        runs += dispatch("serve-instances", ready, extra) if ready else []
    return runs


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
    """Stop the instances' backends on their nodes, then drop their records
    (releasing their claims)."""
    instances = [i for i in (read_instance(iid) for iid in instance_ids) if i is not None]
    stops = dispatch("stop-instances", instances, workers="all")
    if stops:
        results = wait_for_node_runs(stops, timeout=STOP_TIMEOUT_S)
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
        metadata = fetch_metadata(dep.source, dep.category)
        # Logged for the run's record; the server re-estimates per candidate device split
        # from the stored metadata and each instance's configuration while it places.
        estimate_resources(metadata, dep.config())
        scheduled = []
        for inst in select_gpus(plan.to_place):
            if inst.state != InstanceState.SCHEDULED or inst.worker is None:
                unplaced[inst.id] = inst.state_message
                continue
            placed[inst.id] = inst.worker
            scheduled.append(inst)
        meta = {"metadata": metadata.model_dump(mode="json") if metadata else None}
        serve_runs = serve(scheduled, meta)
    stale = stale_scheduled(name, exclude=set(placed))
    if stale:
        get_run_logger().info("instances %s were placed but never started; dispatching them again",
                              [i.name for i in stale])
        serve_runs += serve(stale)
    node_runs = wait_for_node_runs(serve_runs) if serve_runs else {}
    return ConvergeReport(
        deployment=name,
        created=plan.created,
        placed=placed,
        unplaced=unplaced,
        removed=removed,
        node_runs=node_runs,
    )
