"""Node-local tasks: they run on the node that holds (or will hold) the instance."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gpufleet.client import ApiError
from gpufleet.core.schemas import EngineInstall, InstanceView, ModelMetadata, RpcServerInfo
from gpufleet.core.states import InstanceState
from gpufleet.node import backends, drain, engine_install, run_logs
from gpufleet.node.context import current_node
from gpufleet.node.runtimes import images
from gpufleet.node.registry import BackendRecord
from gpufleet.node.weights import PullProgress
from tasks._progress import PullArtifact
from tasks.server import report_rpc_servers, report_state

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Failed:
    """One instance's step failed; ``message`` says what failed and where, in words."""

    message: str


#: Instances of one node run handled at once (each step mostly waits on files, processes, HTTP).
MAX_PARALLEL = 32


def for_each(items: Sequence[T], step: Callable[[T], R], key: Callable[[T], int]) -> dict[int, R | Failed]:
    """``step`` on every item concurrently, each in a copy of this task's context (so its logs
    go to the task run); a failure is that item's outcome, never the others'."""
    if not items:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
        futures = {key(item): pool.submit(contextvars.copy_context().run, step, item) for item in items}
    return {k: _outcome(f) for k, f in futures.items()}


def _outcome(future: Future[R]) -> R | Failed:
    try:
        return future.result()
    except backends.BackendFailed as exc:
        return Failed(str(exc))
    except Exception as exc:  # noqa: BLE001 - reported as that instance's ERROR
        return Failed(f"{type(exc).__name__}: {exc}")


# One task run per step and node run, whatever the number of instances: every task run costs
# the Prefect server several writes, which were most of a 100-replica scale-out's time.


@task(name="pull-weights", cache_policy=NO_CACHE)
def pull_weights(instances: list[InstanceView]) -> dict[int, Path | Failed]:
    """Make the weights available on this node: local paths are checked, hub
    files are pulled into the node cache, with progress in the instance state
    (``DOWNLOADING 42 % (…)``, at most once a second)."""
    node = current_node()

    def pull(instance: InstanceView) -> Path:
        artifact = PullArtifact(instance.name, node.name)  # a Prefect progress artifact
        started, logged = time.monotonic(), [-10]

        def report(p: PullProgress) -> None:
            _report_progress(instance.id, p.describe())
            artifact.update(p)
            if p.percent >= logged[0] + 10 or p.percent == 100:  # the run log gets every 10 %
                logged[0] = p.percent
                run_logs.note(instance.id, p.describe())

        path = backends.resolve_weights(instance, node, report)
        artifact.finish()
        run_logs.note(instance.id, f"weights ready on {node.name} after {time.monotonic() - started:.1f} s: {path}")
        get_run_logger().info("weights for %s on %s: %s", instance.name, node.name, path)
        return path

    return for_each(instances, pull, key=lambda i: i.id)


@task(name="launch-backends", cache_policy=NO_CACHE)
def launch_backends(
    instances: list[InstanceView], paths: dict[int, Path], metadata: ModelMetadata | None
) -> dict[int, BackendRecord | Failed]:
    """Start each backend; on a docker node its image is pulled first, the pull's progress
    in the instance state (``PULLING IMAGE 42 %``)."""
    node = current_node()

    def launch(instance: InstanceView) -> BackendRecord:
        image = backends.pull_image(instance, node, lambda percent: _report_pull(instance.id, percent))
        record = backends.launch(instance, paths[instance.id], node, metadata)
        get_run_logger().info(
            "launched %s on %s: pid %d, port %d, log %s%s",
            instance.name, node.name, record.pid, record.port, record.log_path,
            f", container {record.container_id[:12]} of {image}" if record.container_id else "",
        )
        return record

    return for_each(instances, launch, key=lambda i: i.id)


@task(name="health-check", cache_policy=NO_CACHE)  # bounded by wait_healthy's own timeouts
def health_check(records: list[BackendRecord]) -> dict[int, str | Failed]:
    """Until each backend answers one of its engine's health paths, within the engine's
    readiness timeout (vLLM loads far longer than llama.cpp)."""
    host = current_node().bind_host

    def check(record: BackendRecord) -> str:
        path = backends.wait_healthy(record, host, record.readiness_timeout_s, tuple(record.health_paths))
        backends.mark_healthy(record, current_node(), path)
        get_run_logger().info("%s healthy on port %d (%s)", record.instance_name, record.port, path)
        return path

    return for_each(records, check, key=lambda r: r.instance_id)


def _report_pull(instance_id: int, percent: int) -> None:
    _report_progress(instance_id, images.describe_progress(percent))


def _report_progress(instance_id: int, message: str) -> None:
    """DOWNLOADING with the pull's message; an instance being restarted is STARTING,
    which does not go back to DOWNLOADING, so it keeps STARTING with the same message
    (a restart whose weights were removed, or whose first download failed, pulls again)."""
    try:
        report_state(instance_id, InstanceState.DOWNLOADING, message)
    except ApiError as exc:
        if exc.status != 409:
            raise
        report_state(instance_id, InstanceState.STARTING, message)


@task(name="start-rpc-servers", cache_policy=NO_CACHE)
def start_rpc_servers(instances: list[InstanceView]) -> dict[int, list[RpcServerInfo] | Failed]:
    """This worker's share of distributed instances: one llama.cpp RPC server per GPU of each
    part, listening, and reported to the server for the main worker."""
    node = current_node()

    def start(instance: InstanceView) -> list[RpcServerInfo]:
        placement = instance.placement
        part = next((p for p in placement.parts if p.worker == node.name), None) if placement else None
        if part is None:
            raise backends.BackendFailed(f"instance {instance.name} has no RPC part on worker {node.name}")
        records = backends.start_rpc_servers(instance, node, part.gpu_indexes)
        servers = [RpcServerInfo(worker=node.name, gpu_index=r.gpu_index or 0, host=node.bind_host, port=r.port,
                                 pid=r.pid) for r in records]
        report_rpc_servers(instance.id, node.name, servers)
        get_run_logger().info("RPC servers of %s on %s: %s", instance.name, node.name,
                              ", ".join(f"GPU {s.gpu_index} at {s.host}:{s.port}" for s in servers))
        return servers

    return for_each(instances, start, key=lambda i: i.id)


@task(name="stop-backends", cache_policy=NO_CACHE)
def stop_backends(instance_ids: list[int]) -> dict[int, bool | Failed]:
    """Every backend of these instances on this node (and its RPC servers), at once."""
    node = current_node()

    def stop(instance_id: int) -> bool:
        drained = drain.drain_instance(instance_id, node)  # requests in progress finish first (up to a grace)
        if drained is not None:
            get_run_logger().info("instance %d on %s: drained (%s) in %.1f s", instance_id, node.name,
                                  drained.outcome, drained.waited_s)
        stopped = backends.stop(instance_id, node)
        get_run_logger().info("instance %d on %s: %s", instance_id, node.name,
                              "backend stopped" if stopped else "no running backend")
        return stopped

    return for_each(instance_ids, stop, key=lambda i: i)


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
