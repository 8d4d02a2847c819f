"""Node-local tasks: they run on the node that holds (or will hold) the instance."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from gpufleet.client import ApiError
from gpufleet.core.schemas import EngineInstall, InstanceView, ModelMetadata, RpcServerInfo
from gpufleet.core.states import InstanceState
from gpufleet.node import backends, engine_install
from gpufleet.node.context import current_node
from gpufleet.node.runtimes import images
from gpufleet.node.registry import BackendRecord
from gpufleet.node.weights import PullProgress
from tasks.server import report_rpc_servers, report_state



@task(name="pull-weights")
def pull_weights(instance: InstanceView) -> Path:
    """Make the weights available on this node: local paths are checked, hub
    files are pulled into the node cache, with progress in the instance state
    (``DOWNLOADING 42 % (…)``, at most once a second)."""
    node = current_node()

    def report(p: PullProgress) -> None:
        report_state(instance.id, InstanceState.DOWNLOADING, p.describe())

    path = backends.resolve_weights(instance, node, report)
    get_run_logger().info("weights for %s on %s: %s", instance.name, node.name, path)
    return path


@task(name="launch-instance")
def launch_instance(
    instance: InstanceView, model_path: Path, metadata: ModelMetadata | None
) -> BackendRecord:
    """Start the backend; on a docker node its image is pulled first, the pull's progress
    in the instance state (``PULLING IMAGE 42 %``)."""
    node = current_node()
    image = backends.pull_image(instance, node, lambda percent: _report_pull(instance.id, percent))
    record = backends.launch(instance, model_path, node, metadata)
    get_run_logger().info(
        "launched %s on %s: pid %d, port %d, log %s%s",
        instance.name, node.name, record.pid, record.port, record.log_path,
        f", container {record.container_id[:12]} of {image}" if record.container_id else "",
    )
    return record


def _report_pull(instance_id: int, percent: int) -> None:
    """DOWNLOADING with the pull's message; an instance being restarted is STARTING,
    which does not go back to DOWNLOADING, so it keeps STARTING with the same message."""
    message = images.describe_progress(percent)
    try:
        report_state(instance_id, InstanceState.DOWNLOADING, message)
    except ApiError as exc:
        if exc.status != 409:
            raise
        report_state(instance_id, InstanceState.STARTING, message)


@task(name="start-rpc-servers")
def start_rpc_servers(instance: InstanceView) -> list[RpcServerInfo]:
    """This worker's share of a distributed instance: one llama.cpp RPC server per
    GPU of its part, listening, and reported to the server for the main worker."""
    node = current_node()
    part = next((p for p in instance.placement.parts if p.worker == node.name), None) if instance.placement else None
    if part is None:
        raise backends.BackendFailed(f"instance {instance.name} has no RPC part on worker {node.name}")
    records = backends.start_rpc_servers(instance, node, part.gpu_indexes)
    servers = [RpcServerInfo(worker=node.name, gpu_index=r.gpu_index or 0, host=node.bind_host, port=r.port,
                             pid=r.pid) for r in records]
    report_rpc_servers(instance.id, node.name, servers)
    get_run_logger().info("RPC servers of %s on %s: %s", instance.name, node.name,
                          ", ".join(f"GPU {s.gpu_index} at {s.host}:{s.port}" for s in servers))
    return servers


@task(name="health-check")  # bounded by wait_healthy's own timeout
def health_check(record: BackendRecord, timeout: float | None = None) -> str:
    """Until the backend answers one of its engine's health paths, within the engine's
    readiness timeout (vLLM loads far longer than llama.cpp)."""
    path = backends.wait_healthy(record, current_node().bind_host, timeout or record.readiness_timeout_s,
                                 tuple(record.health_paths))
    get_run_logger().info("%s healthy on port %d (%s)", record.instance_name, record.port, path)
    return path


@task(name="stop-instance")
def stop_instance(instance_id: int) -> bool:
    node = current_node()
    stopped = backends.stop(instance_id, node)
    get_run_logger().info(
        "instance %d on %s: %s", instance_id, node.name,
        "backend stopped" if stopped else "no running backend",
    )
    return stopped


@task(name="install-backend")
def install_backend(engine: str, version: str, device: str) -> EngineInstall:
    """Install an engine version into its own environment on this node, each progress
    line (pip's, or the llama.cpp build's steps) to the run log. Idempotent and
    concurrent-safe: a second run waits on the first's lock, then finds it installed."""
    node = current_node()
    logger = get_run_logger()
    logger.info("installing %s %s (%s) on %s", engine, version, device, node.name)
    installed = engine_install.install(engine, version, device, node, progress=logger.info)
    logger.info("%s %s on %s: %s (devices: %s)", engine, installed.version, node.name, installed.location,
                ", ".join(installed.devices))
    return installed
