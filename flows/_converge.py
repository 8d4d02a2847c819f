"""The reconcile recipe shared by deploy, scale, stop, start, delete, delete-instance and
reconcile: plan → dispatch → wait.

The server plans (``apply-plan``: one request, one transaction under the placement ledger)
and answers the node actions; this recipe dispatches them as one Prefect run per worker
and operation, and waits. Instances it stopped go back to the server with the next
``apply-plan``, which forgets them — releasing their memory, so instances waiting for it
are placed and served in the same run. Calls to the gpufleet server are O(1) in replicas.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from uuid import UUID

from prefect import get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows._cancel import note_started
from gpufleet.core.schemas import AppliedPlan, InstanceView, NodeAction
from gpufleet.core.states import InstanceState
from tasks.dispatch import run_on_node, wait_for_node_runs
from tasks.server import apply_plan, read_instances

STOP_TIMEOUT_S = 120.0
RPC_START_TIMEOUT_S = 180.0
#: apply → stop → apply (forget, place what now fits) → serve; a third round is a guard.
MAX_ROUNDS = 3


class ConvergeReport(BaseModel):
    deployment: str
    created: list[int] = Field(default_factory=list)
    placed: dict[int, str] = Field(default_factory=dict)  # instance id -> worker
    unplaced: dict[int, str] = Field(default_factory=dict)  # instance id -> reason
    removed: list[int] = Field(default_factory=list)
    node_runs: dict[str, str] = Field(default_factory=dict)  # flow run id -> final state

    def absorb(self, applied: AppliedPlan) -> None:
        self.created += applied.created
        self.placed.update(applied.placed)
        for iid in applied.placed:
            self.unplaced.pop(iid, None)
        self.unplaced.update(applied.unplaced)
        self.removed += applied.forgotten


def batch_key(operation: str, worker: str, instances: Iterable[InstanceView]) -> str:
    """Idempotency key of a node run: a retried task within this flow run finds the run it
    already created; another flow run (a re-drive after a failure) or other instances never
    match it. Serving is idempotent on the node anyway."""
    incarnations = ",".join(f"{i.name}@{i.created_at.timestamp()}#{i.restart_count}" for i in instances)
    digest = hashlib.sha256(incarnations.encode()).hexdigest()[:16]
    return f"{operation}-{worker}-{digest}-{flow_run.id}"


NODE_FLOW = {"stop": "stop-instances", "serve-rpc": "serve-rpc-servers", "serve": "serve-instances"}


def dispatch(kind: str, actions: list[NodeAction], instances: dict[int, InstanceView],
             addresses: dict[str, str], extra: dict | None = None) -> list[UUID]:
    """One node run per worker for all of its instances, started concurrently."""
    groups: dict[str, list[InstanceView]] = defaultdict(list)
    for action in actions:
        if action.kind == kind and action.instance in instances:
            groups[action.worker].append(instances[action.instance])
    futures = [
        run_on_node.submit(NODE_FLOW[kind], worker, {"instance_ids": [i.id for i in group], **(extra or {})},
                           batch_key(NODE_FLOW[kind], worker, group), addresses.get(worker))
        for worker, group in groups.items()
    ]
    started = [f.result() for f in futures]
    note_started(started)
    return started


def serve(applied: AppliedPlan) -> list[UUID]:
    """Start the placed instances; returns the serve runs to wait for.

    A distributed instance's llama-server connects to its RPC servers as it starts, so their
    runs (one per part worker) go first and are awaited; an instance whose RPC servers
    failed is in ERROR (the node said why) and is not started."""
    instances = {i.id: i for i in applied.instances}
    meta = {"metadata": applied.metadata.model_dump(mode="json") if applied.metadata else None}
    actions = applied.node_actions
    rpc = [a for a in actions if a.kind == "serve-rpc"]
    mains = [a for a in actions if a.kind == "serve"]
    waiting_for_rpc = {a.instance for a in rpc}
    runs = dispatch("serve", [a for a in mains if a.instance not in waiting_for_rpc], instances,
                    applied.worker_addresses, meta)
    if rpc:
        results = wait_for_node_runs(dispatch("serve-rpc", rpc, instances, applied.worker_addresses),
                                     timeout=RPC_START_TIMEOUT_S)
        if any(state != "Completed" for state in results.values()):
            get_run_logger().warning("RPC server runs did not all complete: %s", results)
        ready = {i.id: i for i in read_instances(sorted(waiting_for_rpc)) if i.state != InstanceState.ERROR}
        runs += dispatch("serve", [a for a in mains if a.instance in ready], ready, applied.worker_addresses, meta)
    return runs


def stop(applied: AppliedPlan) -> list[int]:
    """Stop the instances marked for removal on every worker they run on; returns them (their
    records go with the next apply-plan, whatever the node runs' outcome: a node that missed
    the stop removes backends the server no longer knows when it reconnects)."""
    stops = [a for a in applied.node_actions if a.kind == "stop"]
    if not stops:
        return []
    instances = {i.id: i for i in applied.instances}
    results = wait_for_node_runs(dispatch("stop", stops, instances, applied.worker_addresses), timeout=STOP_TIMEOUT_S)
    failed = {r: s for r, s in results.items() if s != "Completed"}
    if failed:
        get_run_logger().warning("stop runs did not complete: %s; the node stops unknown backends when it reconnects",
                                 failed)
    return sorted({a.instance for a in stops})


def log_plan(applied: AppliedPlan) -> None:
    log = get_run_logger()
    for iid, reason in applied.unplaced.items():
        log.info("instance %d stays PENDING: %s", iid, reason)
    for action in applied.node_actions:
        if action.kind == "restart":
            log.info("instance %d: %s (left to its restart run)", action.instance, action.reason)
        else:
            log.info("instance %d: %s on %s — %s", action.instance, action.kind, action.worker, action.reason)


def converge(name: str) -> ConvergeReport:
    report = ConvergeReport(deployment=name)
    serve_runs: list[UUID] = []
    stopped: list[int] = []
    for _ in range(MAX_ROUNDS):
        applied = apply_plan(name, stopped)
        report.absorb(applied)
        if not applied.exists:
            break
        log_plan(applied)
        serve_runs += serve(applied)
        stopped = stop(applied)
        if not stopped:
            break
    else:
        report.absorb(apply_plan(name, stopped))  # forget the last ones stopped
    report.node_runs = wait_for_node_runs(serve_runs) if serve_runs else {}
    return report
