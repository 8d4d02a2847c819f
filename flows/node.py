"""Node-local flows, routed to `node-<worker>` queues: serve and stop instances,
install engine versions.

One run per node and operation, whatever the number of instances: each Prefect
flow run costs the Prefect server a dozen writes, so ten replicas on one node
are ten task chains in one run, not ten runs. Steps run concurrently across
instances; each instance succeeds or fails on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture

from gpufleet.core.schemas import DeviceKind, EngineInstall, InstanceStateUpdate, InstanceView, ModelMetadata
from gpufleet.core.states import InstanceState
from gpufleet.node import backends, engines
from gpufleet.node.context import current_node
from tasks.node import health_check, install_backend, launch_instance, pull_weights, start_rpc_servers, stop_instance
from gpufleet.node.registry import BackendRecord
from tasks.server import read_instances, report_engines, report_state, report_states

T = TypeVar("T")


def _fail(inst: InstanceView, exc: BaseException) -> None:
    """Record what failed and where; stop whatever was started."""
    backends.stop(inst.id, current_node(), grace=5)
    message = str(exc) if isinstance(exc, backends.BackendFailed) else f"{type(exc).__name__}: {exc}"
    report_state(inst.id, InstanceState.ERROR, message)


def _settle(inst: InstanceView, future: PrefectFuture[T]) -> T | None:
    """Wait for one instance's step; if it failed, put the instance in ERROR and return None."""
    future.wait()
    if future.state.is_completed():
        return future.result()
    _fail(inst, future.result(raise_on_failure=False))  # type: ignore[arg-type]
    return None


def report_phase(records: dict[int, BackendRecord], state: InstanceState,
                 message: Callable[[BackendRecord], str]) -> None:
    """One request for every instance that reached ``state`` in this phase."""
    if records:
        report_states({iid: InstanceStateUpdate(state=state, message=message(r), port=r.port, pid=r.pid)
                       for iid, r in records.items()})


@flow(name="serve-instances")
def serve_instances(instance_ids: list[int], metadata: ModelMetadata | None = None) -> list[int]:
    """pull weights → launch → health check → RUNNING, for all instances at once.
    A failure puts that instance in ERROR with what failed, where, and the backend's
    last log lines; the run fails (after reporting) if any instance failed."""
    node = current_node().name
    instances = [i for i in read_instances(instance_ids) if not i.deleting]

    pulls = {i.id: pull_weights.submit(i) for i in instances}
    launches = {}
    for inst in instances:
        if (path := _settle(inst, pulls[inst.id])) is not None:
            launches[inst.id] = launch_instance.submit(inst, path, metadata)
    records = {i.id: record for i in instances if i.id in launches and (record := _settle(i, launches[i.id])) is not None}
    report_phase(records, InstanceState.STARTING,
                 lambda r: f"backend started on {node} (pid {r.pid}, port {r.port}); waiting for health")
    checks = {iid: health_check.submit(record) for iid, record in records.items()}
    healthy = {i.id: records[i.id] for i in instances if i.id in checks and _settle(i, checks[i.id]) is not None}
    report_phase(healthy, InstanceState.RUNNING, lambda r: f"serving on {node}:{r.port}")
    running = list(healthy)
    failed = [i.id for i in instances if i.id not in running]
    if failed:
        raise RuntimeError(f"instances {failed} failed on {node}; see their state messages")
    get_run_logger().info("serving on %s: %s", node, running)
    return running


@flow(name="serve-rpc-servers")
def serve_rpc_servers(instance_ids: list[int]) -> dict[int, int]:
    """This worker's RPC parts of distributed instances: start one llama.cpp RPC server
    per GPU and report them, so the main worker's llama-server can use them. A failure
    puts that instance in ERROR (naming this worker) and fails the run."""
    node = current_node().name
    instances = [i for i in read_instances(instance_ids) if not i.deleting]
    futures = {i.id: start_rpc_servers.submit(i) for i in instances}
    started = {i.id: len(servers) for i in instances if (servers := _settle(i, futures[i.id])) is not None}
    failed = [i.id for i in instances if i.id not in started]
    if failed:
        raise RuntimeError(f"RPC servers of instances {failed} failed on {node}; see their state messages")
    return started


@flow(name="stop-instances")
def stop_instances(instance_ids: list[int]) -> dict[int, bool]:
    """Stop these instances' backends on this node, all at once."""
    futures = {iid: stop_instance.submit(iid) for iid in instance_ids}
    return {iid: f.result() for iid, f in futures.items()}


@flow(name="install-backend")
def install_backend_flow(engine: str, version: str, device: DeviceKind = "cpu") -> EngineInstall:
    """Install an engine version on this node (`gpufleet backends install`), then report
    every engine version the node can run to the server, so the new one is listed and
    deployable at once. Idempotent; a concurrent run waits for the first one's install."""
    node = current_node()
    installed = install_backend(engine, version, device)
    report = engines.node_engines(node)
    report_engines(node.name, report)
    get_run_logger().info("%s now runs: %s", node.name,
                          "; ".join(f"{e.engine} {e.version} ({', '.join(e.devices)})" for e in report))
    return installed
