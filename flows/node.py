"""Node-local flows, routed to `node-<worker>` queues: serve and stop instances,
install engine versions.

One run per node and operation, and one task run per step, whatever the number of
instances: each Prefect flow or task run costs the Prefect server several writes, so ten
replicas on one node are one run of three tasks (pull, launch, health check), each handling
the ten concurrently. Each instance succeeds or fails on its own.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow, get_run_logger

from flows._names import install_name, on_node
from gpufleet.core.schemas import DeviceKind, EngineInstall, InstanceStateUpdate, ModelMetadata
from gpufleet.core.states import InstanceState
from gpufleet.node import backends, engines
from gpufleet.node.context import current_node
from gpufleet.node.registry import BackendRecord
from tasks.node import (
    Failed,
    health_check,
    install_backend,
    launch_backends,
    pull_weights,
    start_rpc_servers,
    stop_backends,
)
from tasks.server import read_instances, report_engines, report_states


def _fail(outcomes: dict[int, object]) -> set[int]:
    """Put the instances whose step failed in ERROR (one request), with what failed and where;
    stop whatever of them was started. Returns their ids."""
    failed = {iid: o.message for iid, o in outcomes.items() if isinstance(o, Failed)}
    node = current_node()
    for iid in failed:
        backends.stop(iid, node, grace=5)
    if failed:
        report_states({iid: InstanceStateUpdate(state=InstanceState.ERROR, message=m) for iid, m in failed.items()})
    return set(failed)


def report_phase(records: dict[int, BackendRecord], state: InstanceState,
                 message: Callable[[BackendRecord], str]) -> None:
    """One request for every instance that reached ``state`` in this phase."""
    if records:
        report_states({iid: InstanceStateUpdate(state=state, message=message(r), port=r.port, pid=r.pid)
                       for iid, r in records.items()})


@flow(name="serve-instances", flow_run_name=on_node("serve-instances"))
def serve_instances(instance_ids: list[int], metadata: ModelMetadata | None = None) -> list[int]:
    """pull weights → launch → health check → RUNNING, each step for all instances at once.
    A failure puts that instance in ERROR with what failed, where, and the backend's last
    log lines; the run fails (after reporting) if any instance failed."""
    node = current_node().name
    # an instance placed elsewhere meanwhile (its placement here was released) is not ours
    instances = [i for i in read_instances(instance_ids) if not i.deleting and i.worker == node]

    paths = pull_weights(instances)
    failed = _fail(paths)
    pulled = [i for i in instances if i.id not in failed]
    launched = launch_backends(pulled, {i.id: paths[i.id] for i in pulled}, metadata)
    failed |= _fail(launched)
    records = {iid: r for iid, r in launched.items() if not isinstance(r, Failed)}
    report_phase(records, InstanceState.STARTING,
                 lambda r: f"backend started on {node} (pid {r.pid}, port {r.port}); waiting for health")
    checks = health_check(list(records.values()))
    failed |= _fail(checks)
    healthy = {iid: records[iid] for iid, c in checks.items() if not isinstance(c, Failed)}
    report_phase(healthy, InstanceState.RUNNING, lambda r: f"serving on {node}:{r.port}")
    if failed:
        raise RuntimeError(f"instances {sorted(failed)} failed on {node}; see their state messages")
    get_run_logger().info("serving on %s: %s", node, sorted(healthy))
    return sorted(healthy)


@flow(name="serve-rpc-servers", flow_run_name=on_node("serve-rpc-servers"))
def serve_rpc_servers(instance_ids: list[int]) -> dict[int, int]:
    """This worker's RPC parts of distributed instances: start one llama.cpp RPC server
    per GPU and report them, so the main worker's llama-server can use them. A failure
    puts that instance in ERROR (naming this worker) and fails the run."""
    node = current_node().name
    instances = [i for i in read_instances(instance_ids)
                 if not i.deleting and i.placement is not None and node in i.placement.workers()]
    outcomes = start_rpc_servers(instances)
    failed = sorted(_fail(outcomes))
    started = {iid: len(servers) for iid, servers in outcomes.items() if not isinstance(servers, Failed)}
    if failed:
        raise RuntimeError(f"RPC servers of instances {failed} failed on {node}; see their state messages")
    return started


@flow(name="stop-instances", flow_run_name=on_node("stop-instances"))
def stop_instances(instance_ids: list[int]) -> dict[int, bool]:
    """Stop these instances' backends on this node, all at once."""
    outcomes = stop_backends(instance_ids)
    failed = {iid: o.message for iid, o in outcomes.items() if isinstance(o, Failed)}
    if failed:
        raise RuntimeError(f"could not stop on {current_node().name}: {failed}")
    return {iid: bool(o) for iid, o in outcomes.items()}


@flow(name="install-backend", flow_run_name=install_name)
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
