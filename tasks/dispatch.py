"""Route node-local flows to the node's own work queue and wait for them."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import httpx
from prefect import get_client, task
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from gpufleet.orchestration import deployment_name, node_queue, node_run_name
from tasks._retry import NETWORK_TASK

NODE_RUN_TIMEOUT_S = 900.0


@task(name="run-on-node", **NETWORK_TASK)
def run_on_node(flow_name: str, worker: str, parameters: dict[str, Any], idempotency_key: str,
                address: str | None = None) -> UUID:
    """Start `flow_name` on `worker`'s queue; the idempotency key makes a retried
    task find the run it already created instead of starting a second one. With the
    node's ``address``, its worker is told to poll at once."""
    run: FlowRun = run_deployment(  # type: ignore[assignment]
        deployment_name(flow_name),
        parameters=parameters,
        work_queue_name=node_queue(worker),
        flow_run_name=node_run_name(flow_name, worker, parameters.get("instance_ids")),
        timeout=0,
        idempotency_key=idempotency_key,
    )
    if address:
        poke_node(address)
    return run.id


def poke_node(address: str) -> None:
    """Tell the node's worker to poll now (best effort: its regular poll is the fallback)."""
    try:
        httpx.post(f"{address}/v1/poke", timeout=2)
    except httpx.HTTPError:
        pass


@task(name="wait-for-node-runs")
def wait_for_node_runs(run_ids: list[UUID], timeout: float = NODE_RUN_TIMEOUT_S) -> dict[str, str]:
    """Wait until every run is final; returns run id -> final state name."""
    deadline = time.monotonic() + timeout
    pending = set(run_ids)
    final: dict[str, str] = {}
    me = flow_run.id  # this control run: cancelled (Prefect UI) → stop waiting (flows/_cancel.py)
    with get_client(sync_client=True) as client:
        while pending and time.monotonic() < deadline:
            # one query for all runs: polling each separately loads a SQLite-backed Prefect server
            watched = list(pending) + ([UUID(str(me))] if me else [])
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=watched)))
            for run in runs:
                if me and str(run.id) == str(me):
                    if run.state is not None and (run.state.is_cancelling() or run.state.is_cancelled()):
                        raise RuntimeError(f"flow run {me} was cancelled while waiting for node runs")
                    continue
                if run.state is not None and run.state.is_final():
                    final[str(run.id)] = run.state.name
                    pending.discard(run.id)
            if pending:
                time.sleep(0.25)
    for run_id in pending:
        final[str(run_id)] = "TimedOut"
    return final
