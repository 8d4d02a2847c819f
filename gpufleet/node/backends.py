"""Node-local backend operations: find the weights, launch, check health, stop.

Each function is one step of the serve/stop flows; the Prefect tasks in
`tasks/node.py` wrap them with retries and logging.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import httpx

from gpufleet.core.backends import llama_cpp
from gpufleet.core.estimation.llama_params import DEFAULT_CONTEXT
from gpufleet.core.schemas import InstanceView, ModelMetadata
from gpufleet.node import processes, weights
from gpufleet.node.context import NodeContext
from gpufleet.node.logs import tail_lines
from gpufleet.node.registry import BackendRecord, BackendRegistry
from gpufleet.runtimes.llama_server import llama_server_executable
from gpufleet.sources.local import ModelSourceError, resolve_gguf_path

LOG_LINES_IN_ERRORS = 15


class BackendFailed(RuntimeError):
    """The backend could not be started or did not become healthy; the message
    says where and includes its last log lines."""


@lru_cache(maxsize=None)
def _registry_for(directory: Path) -> BackendRegistry:
    return BackendRegistry(directory)


def registry(node: NodeContext) -> BackendRegistry:
    """One registry object (and so one lock) per node directory in this process."""
    return _registry_for(node.backends_dir)


def log_path(node: NodeContext, instance: InstanceView) -> Path:
    return node.logs_dir / f"{instance.id}-{instance.name}.log"


def resolve_weights(
    instance: InstanceView, node: NodeContext, progress: weights.ProgressFn | None = None
) -> Path:
    """What the backend is pointed at on this worker. Local paths must exist here
    (the server may not see the workers' paths, so this is where a missing one is
    caught); hub sources are pulled into the node's cache, once per file."""
    source = instance.config.source
    try:
        if source.kind == "local_path":
            assert source.local_path is not None
            return resolve_gguf_path(source.local_path)
        return weights.pull_hub_model(source, node.home, progress)
    except ModelSourceError as exc:
        raise BackendFailed(f"{exc} on worker {node.name}") from exc


def launch(
    instance: InstanceView,
    model_path: Path,
    node: NodeContext,
    metadata: ModelMetadata | None,
) -> BackendRecord:
    """Start the backend unless ours is already running (a retried task must not start two)."""
    reg = registry(node)
    with reg.lock:
        existing = reg.get(instance.id)
        if existing and processes.is_alive(existing.pid, existing.start_time):
            return existing
        if instance.placement is None:
            raise BackendFailed(f"instance {instance.id} has no placement")
        port = processes.allocate_port(node.bind_host, reg.used_ports())
        default_ctx = (
            min(DEFAULT_CONTEXT, metadata.context_length) if metadata else DEFAULT_CONTEXT
        )
        spec = llama_cpp.build_launch(
            instance.config,
            model_path=str(model_path),
            alias=instance.deployment,
            host=node.bind_host,
            port=port,
            placement=instance.placement,
            default_context=default_ctx,
        )
        command = llama_server_executable() + spec.args
        log = log_path(node, instance)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(f"[gpufleet] starting on {node.name}: {' '.join(command)}\n")
        pid, start_time = processes.spawn(command, spec.env, log, cwd=node.home)
        record = BackendRecord(
            instance_id=instance.id,
            instance_name=instance.name,
            pid=pid,
            start_time=start_time,
            port=port,
            log_path=str(log),
            command=command,
        )
        reg.save(record)
        return record


def last_log_lines(record: BackendRecord, n: int = LOG_LINES_IN_ERRORS) -> str:
    try:
        return "".join(tail_lines(Path(record.log_path), n)).rstrip()
    except FileNotFoundError:
        return "(no log file)"


def wait_healthy(
    record: BackendRecord, host: str, timeout: float, paths: tuple[str, ...] = ("/health", "/v1/models")
) -> str:
    """Poll the health endpoints until one answers 200; returns the path that did."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if not processes.is_alive(record.pid, record.start_time):
                processes.reap_children()
                raise BackendFailed(
                    f"backend exited during start-up; last log lines:\n{last_log_lines(record)}"
                )
            for path in paths:
                try:
                    resp = http.get(f"http://{host}:{record.port}{path}")
                except httpx.TransportError:
                    break  # not listening yet
                if resp.status_code == 200:
                    return path
                if resp.status_code != 404:
                    break  # 503 = loading; try again later
            time.sleep(0.1)
    raise BackendFailed(
        f"backend not healthy after {timeout:.0f} s on port {record.port}; "
        f"last log lines:\n{last_log_lines(record)}"
    )


def stop(instance_id: int, node: NodeContext, grace: float = 10.0) -> bool:
    """Stop the instance's backend and forget it. Returns True if a process was stopped."""
    reg = registry(node)
    with reg.lock:
        record = reg.get(instance_id)
        if record is None:
            return False
        record = record.model_copy(update={"stopping": True})
        reg.save(record)
    # Terminate outside the lock: stopping several backends at once must not queue up.
    was_running = processes.terminate(record.pid, record.start_time, grace)
    processes.reap_children()
    with reg.lock:
        current = reg.get(instance_id)
        if current is not None and current.pid == record.pid:
            reg.remove(instance_id)
    return was_running
