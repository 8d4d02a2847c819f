"""Node-local backend operations: find the weights, launch, check health, stop.

Each function is one step of the serve/stop flows; the Prefect tasks in
`tasks/node.py` wrap them with retries and logging.
"""

from __future__ import annotations

import socket
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

import httpx

from gpufleet.core.backends import llama_cpp
from gpufleet.core.backends import llama_rpc as llama_rpc_args
from gpufleet.core.estimation.llama_params import DEFAULT_CONTEXT
from gpufleet.core.schemas import InstanceView, ModelMetadata
from gpufleet.node import processes, weights
from gpufleet.node.context import NodeContext
from gpufleet.node.logs import tail_lines
from gpufleet.node.registry import BackendRecord, BackendRegistry
from gpufleet.runtimes import llama_rpc
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
    """Start the backend unless ours is already running (a retried task must not start two).
    A distributed instance's llama-server gets the RPC servers of its devices: those its
    part workers reported, then this node's own GPUs (served by loopback RPC servers when
    they are virtual)."""
    reg = registry(node)
    with reg.lock:
        existing = reg.get(instance.id)
        if existing and processes.is_alive(existing.pid, existing.start_time):
            return existing
        placement = instance.placement
        if placement is None:
            raise BackendFailed(f"instance {instance.id} has no placement")
        executable, rpc_servers, local_gpus = llama_server_executable(), [], None
        if placement.distributed:
            executable = _rpc_llama_server(node)
            rpc_servers, local_gpus = _rpc_devices(instance, node)
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
            placement=placement,
            default_context=default_ctx,
            rpc_servers=rpc_servers,
            local_gpus=local_gpus,
        )
        return _spawn(instance, node, executable + spec.args, spec.env, port, log_path(node, instance))


def _spawn(instance: InstanceView, node: NodeContext, command: list[str], env: dict[str, str], port: int,
           log: Path, role: Literal["server", "rpc"] = "server", gpu_index: int | None = None) -> BackendRecord:
    """Start a process and record it before returning (the caller holds the registry lock)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"[gpufleet] starting on {node.name}: {' '.join(command)}\n")
    pid, start_time = processes.spawn(command, env, log, cwd=node.home)
    record = BackendRecord(instance_id=instance.id, instance_name=instance.name, pid=pid, start_time=start_time,
                           port=port, log_path=str(log), command=command, role=role, gpu_index=gpu_index)
    registry(node).save(record)
    return record


def _rpc_llama_server(node: NodeContext) -> list[str]:
    executable = llama_rpc.rpc_llama_server_executable()
    if executable is None:
        raise BackendFailed(f"worker {node.name} cannot start a distributed instance: "
                            f"{llama_rpc.rpc_unavailable_reason()}")
    return executable


def _rpc_devices(instance: InstanceView, node: NodeContext) -> tuple[list[str], list[int]]:
    """``--rpc`` endpoints in llama.cpp's device order, and the GPUs the process drives itself."""
    assert instance.placement is not None
    reported = {(r.worker, r.gpu_index): llama_rpc_args.endpoint(r.host, r.port) for r in instance.rpc_servers}
    remote = [d for d in instance.placement.devices() if d[0] != node.name]
    missing = [f"{w}:{g}" for w, g in remote if (w, g) not in reported]
    if missing:
        raise BackendFailed(f"the RPC servers for GPUs {', '.join(missing)} of distributed instance "
                            f"{instance.name} have not been reported; they are started before its main process")
    endpoints = [reported[d] for d in remote]
    own = instance.placement.gpu_indexes
    if own and all(g in node.virtual_gpus for g in own):
        records = start_rpc_servers(instance, node, own)
        return endpoints + [llama_rpc_args.endpoint(node.bind_host, r.port) for r in records], []
    return endpoints, list(own)


def start_rpc_servers(instance: InstanceView, node: NodeContext, gpu_indexes: list[int],
                      timeout: float = 30.0) -> list[BackendRecord]:
    """One llama.cpp RPC server per GPU for a distributed instance, each listening
    before this returns. Idempotent: a live server of this instance is kept."""
    executable = llama_rpc.rpc_server_executable()
    if executable is None:
        raise BackendFailed(f"worker {node.name} cannot serve RPC for distributed instance {instance.name}: "
                            f"{llama_rpc.rpc_unavailable_reason()}")
    reg = registry(node)
    records = []
    with reg.lock:
        for gpu in gpu_indexes:
            existing = reg.get_rpc(instance.id, gpu)
            if existing and processes.is_alive(existing.pid, existing.start_time):
                records.append(existing)
                continue
            port = processes.allocate_port(node.bind_host, reg.used_ports())
            spec = llama_rpc_args.build_rpc_server_launch(
                host=node.bind_host, port=port, gpu_index=gpu, virtual=gpu in node.virtual_gpus,
                cache_dir=str(node.rpc_cache_dir))
            log = node.logs_dir / f"{instance.id}-{instance.name}.rpc{gpu}.log"
            records.append(_spawn(instance, node, executable + spec.args, spec.env, port, log, "rpc", gpu))
    for record in records:
        wait_listening(record, node.bind_host, timeout)
    return records


def wait_listening(record: BackendRecord, host: str, timeout: float) -> None:
    """An RPC server speaks llama.cpp's binary protocol, not HTTP: ready = accepts TCP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not processes.is_alive(record.pid, record.start_time):
            processes.reap_children()
            raise BackendFailed(f"{record.describe()} exited during start-up; last log lines:\n"
                                f"{last_log_lines(record)}")
        try:
            with socket.create_connection((host, record.port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise BackendFailed(f"{record.describe()} not listening on port {record.port} after {timeout:.0f} s; "
                        f"last log lines:\n{last_log_lines(record)}")


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
    """Stop everything this node runs for the instance (its llama-server first, then
    its RPC servers) and forget it. Returns True if a process was stopped."""
    reg = registry(node)
    with reg.lock:
        records = [r.model_copy(update={"stopping": True}) for r in reg.of_instance(instance_id)]
        for record in records:
            reg.save(record)
    # Terminate outside the lock: stopping several backends at once must not queue up.
    was_running = False
    for record in records:
        was_running = processes.terminate(record.pid, record.start_time, grace) or was_running
    processes.reap_children()
    with reg.lock:
        for record in records:
            current = reg.read(record.key)
            if current is not None and current.pid == record.pid:
                reg.remove(record)
    return was_running
