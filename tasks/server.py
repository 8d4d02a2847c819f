"""Tasks that read or write gpufleet's state through its server (the only DB writer).

Reads and state reports (`read_instance`, `read_deployment`, `report_state`) are
plain calls, not tasks: they are frequent bookkeeping around the real steps, each
task run costs the Prefect server several writes (a SQLite-backed server then
starts refusing requests under load), and the client already retries them with
backoff. The steps that change what exists are tasks.
"""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task

from gpufleet.client import ApiError
from tasks._connection import connect
from gpufleet.core.schemas import (
    AppliedPlan,
    RpcServerInfo,
    DeploymentSpec,
    DeploymentView,
    EngineInstall,
    InstanceStateUpdate,
    InstanceView,
    StateReportsResult,
)
from gpufleet.core.states import InstanceState
from tasks._retry import NETWORK_TASK


@task(name="register-deployment", **NETWORK_TASK)
def register_deployment(spec: DeploymentSpec) -> DeploymentView:
    with connect() as c:
        return c.register_deployment(spec)


def read_deployment(name: str) -> DeploymentView:
    with connect() as c:
        return c.get_deployment(name)


@task(name="set-replicas", **NETWORK_TASK)
def set_replicas(name: str, replicas: int, issued_at: str | None = None) -> None:
    """Record the count, as of `issued_at` (the request that started this run). A scale asked
    for later already set another count (412): that one stands, and the run converges to it."""
    when = datetime.fromisoformat(issued_at) if issued_at else None
    with connect() as c:
        try:
            c.scale(name, replicas, trigger=False, issued_at=when)
        except ApiError as exc:
            if exc.status != 412:
                raise
            get_run_logger().info("not setting %s to %d replica(s): %s", name, replicas, exc.detail)


@task(name="apply-plan", **NETWORK_TASK)
def apply_plan(name: str, stopped: list[int] | None = None) -> AppliedPlan:
    """The server plans the deployment and applies the database part in one transaction
    (create, mark for removal, forget, place); the node actions come back."""
    with connect() as c:
        return c.reconcile(name, stopped=stopped)


def read_instances(instance_ids: list[int]) -> list[InstanceView]:
    """One request for any number of instances (those deleted meanwhile are absent)."""
    if not instance_ids:
        return []
    with connect() as c:
        return c.list_instances(ids=instance_ids)


def worker_addresses() -> dict[str, str]:
    """Each worker's node agent address (to tell its Prefect worker to poll at once)."""
    with connect() as c:
        return {w.name: w.address for w in c.list_workers() if w.address}


def report_states(reports: dict[int, InstanceStateUpdate]) -> StateReportsResult:
    """A phase of several instances in one request; each report stands on its own."""
    with connect() as c:
        return c.report_states(reports)


def read_instance(instance_id: int) -> InstanceView | None:
    with connect() as c:
        try:
            return c.get_instance(instance_id)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


def report_state(
    instance_id: int,
    state: InstanceState,
    message: str = "",
    port: int | None = None,
    pid: int | None = None,
    restart_count: int | None = None,
) -> InstanceView | None:
    """Report a state; None when the instance no longer exists (deleted meanwhile)."""
    update = InstanceStateUpdate(
        state=state, message=message, port=port, pid=pid, restart_count=restart_count
    )
    with connect() as c:
        try:
            return c.report_state(instance_id, update)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


def report_rpc_servers(instance_id: int, worker: str, servers: list[RpcServerInfo]) -> InstanceView | None:
    """Tell the server which RPC servers this part worker runs for a distributed instance."""
    with connect() as c:
        try:
            return c.report_rpc_servers(instance_id, worker, servers)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


@task(name="mark-removing", **NETWORK_TASK)
def mark_removing(instance_id: int) -> InstanceView | None:
    with connect() as c:
        try:
            return c.mark_deleting(instance_id)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


@task(name="mark-deployment-deleting", **NETWORK_TASK)
def mark_deployment_deleting(name: str) -> None:
    with connect() as c:
        c.mark_deployment_deleting(name)


@task(name="report-engines", **NETWORK_TASK)
def report_engines(worker: str, engines: list[EngineInstall]) -> None:
    """Tell the server what this node can run now, so `backends ls` and the deploy-time
    version check see an install at once, not at the node's next registration."""
    with connect() as c:
        c.report_engines(worker, engines)


def read_deployment_instances(name: str) -> list[InstanceView]:
    """A deployment's instances (a plain read, like read_instance)."""
    with connect() as c:
        return c.list_instances(deployment=name)
