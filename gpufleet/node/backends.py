"""Node-local backend operations: find the weights, launch, check health, stop.

Each function is one step of the serve/stop flows; the Prefect tasks in
`tasks/node.py` wrap them with retries and logging.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import httpx

from gpufleet.core.backends import llama_cpp, vllm, vox_box
from gpufleet.core.backends import llama_rpc as llama_rpc_args
from gpufleet.core.backends.launch import LaunchDescription
from gpufleet.core.backends.registry import engine
from gpufleet.core.estimation.llama_params import DEFAULT_CONTEXT
from gpufleet.core.schemas import InstanceView, ModelMetadata
from gpufleet.node import engines, processes, run_logs, runtimes, weights
from gpufleet.node.context import NodeContext
from gpufleet.node.logs import tail_lines
from gpufleet.node.registry import BackendRecord, BackendRegistry
from gpufleet.node.runtimes import images
from gpufleet.node.runtimes import records as runtime_records
from gpufleet.runtimes import llama_rpc
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
    The engine module describes the launch from the placement; this node finds the
    program for the engine version and the placement's device kind (refusing, with the
    fix, what it cannot run) and starts it."""
    reg = registry(node)
    with reg.lock:
        existing = reg.get(instance.id)
        if existing and processes.is_alive(existing.pid, existing.start_time):
            return existing
        if instance.placement is None:
            raise BackendFailed(f"instance {instance.id} has no placement")
        port = processes.allocate_port(node.bind_host, reg.used_ports())
        desc = describe_launch(instance, model_path, node, metadata, port)
        device = node.device_kind(list(desc.gpu_indexes) or instance.placement.gpu_indexes)
        try:
            program = _program(instance, desc, node, device)
        except engines.EngineUnavailable as exc:
            raise BackendFailed(str(exc)) from exc
        return _spawn(instance, node, desc.command(program), desc.env, port, log_path(node, instance), desc=desc)


def _program(instance: InstanceView, desc: LaunchDescription, node: NodeContext, device: str) -> list[str]:
    """The program on this node, unless an engine image brings its own (docker runtime with
    the deployment's, the node's or the table's image): then the node needs no install."""
    assert instance.placement is not None
    if instance.placement.distributed:
        return _rpc_llama_server(node)
    if node.runtime == "docker":
        try:
            choice = images.choose_image(desc, device, deployment_image=instance.config.image,
                                         node_images=dict(node.images), host_runtime_image=node.host_runtime_image)
        except images.NoImage:
            choice = None
        if choice is not None and choice.mode == "image":
            return [desc.program.name]  # the runtime runs images.in_image_command(desc) inside it
    return engines.resolve_program(desc, node, device)


def describe_launch(instance: InstanceView, model_path: Path, node: NodeContext,
                    metadata: ModelMetadata | None, port: int) -> LaunchDescription:
    """The engine module's launch description for this instance on this node."""
    placement = instance.placement
    assert placement is not None
    config = instance.config
    version = config.backend_version or engine(config.backend).default_version
    if config.backend == "vllm":
        local = placement.gpu_indexes
        return vllm.build_launch(
            config, metadata=metadata, placement=placement, model_path=str(model_path),
            served_name=instance.deployment, host=node.bind_host, port=port,
            gpu_memory={i: node.gpu_total(i) for i in local}, virtual_gpus=node.device_kind(local) == "cpu",
            version=version)
    if config.backend == "vox-box":
        return vox_box.build_launch(
            config, metadata=metadata, placement=placement, model_path=str(model_path),
            served_name=instance.deployment, host=node.bind_host, port=port,
            virtual_gpus=node.device_kind(placement.gpu_indexes) == "cpu", version=version,
            data_dir=str(node.home / "vox-box"))
    rpc_servers: list[str] = []
    local_gpus: list[int] | None = None
    if placement.distributed:
        rpc_servers, local_gpus = _rpc_devices(instance, node)
    default_ctx = min(DEFAULT_CONTEXT, metadata.context_length) if metadata else DEFAULT_CONTEXT
    return llama_cpp.build_launch(
        config, model_path=str(model_path), alias=instance.deployment, host=node.bind_host, port=port,
        placement=placement, default_context=default_ctx, rpc_servers=rpc_servers, local_gpus=local_gpus)


def _spawn(instance: InstanceView, node: NodeContext, command: list[str], env: dict[str, str], port: int,
           log: Path, role: Literal["server", "rpc"] = "server", gpu_index: int | None = None,
           desc: LaunchDescription | None = None) -> BackendRecord:
    """Start the backend on the node's runtime (a process, or a container: docs/runtimes.md)
    and record it before returning (the caller holds the registry lock). A failed start
    leaves nothing behind and says why, with the backend's last log lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    run_logs.rotate(log)  # the previous run's log is kept as .log.1 (a crash's log survives its restart)
    gpus = [gpu_index] if gpu_index is not None else (instance.placement.gpu_indexes if instance.placement else [])
    with log.open("a") as f:
        f.write(run_logs.header(instance=instance.name, run=instance.restart_count + 1, worker=node.name,
                                runtime=runtime_records.node_runtime(node), gpus=gpus, command=command,
                                env={k: (run_logs.MASK if k in instance.config.secret_keys else v) for k, v in env.items()},
                                notes=run_logs.take_notes(instance.id) if role == "server" else ()))
    try:
        record = runtime_records.start_record(instance, node, command, env, port, log, role, gpu_index,
                                              desc or runtime_records.fallback_description(command, env, port))
    except runtimes.StartFailed as exc:
        raise BackendFailed(f"{exc}; last log lines:\n{last_log_lines_of(log)}") from exc
    registry(node).save(record)
    return record


def is_alive(record: BackendRecord) -> bool:
    """Whether the record's backend runs, asked of the runtime that started it."""
    return runtime_records.runtime_of(record).is_alive(record)


def exit_status(record: BackendRecord) -> runtimes.ExitStatus | None:
    """Exit code and OOM flag of a backend that ended, when its runtime knows them."""
    return runtime_records.runtime_of(record).exit_status(record)


def discard(record: BackendRecord) -> None:
    """After an exit was reported: remove what the runtime kept (a container)."""
    runtime_records.runtime_of(record).discard(record)


def pull_image(instance: InstanceView, node: NodeContext, progress: Callable[[int], None]) -> str | None:
    """Pull the instance's image before its launch (docker runtime), with progress; a pull
    that fails is a BackendFailed naming the image and the registry's answer."""
    try:
        return runtime_records.pull_image(instance, node, progress)
    except (images.PullFailed, images.NoImage) as exc:
        raise BackendFailed(str(exc)) from exc


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
    started: list[BackendRecord] = []
    with reg.lock:
        for gpu in gpu_indexes:
            existing = reg.get_rpc(instance.id, gpu)
            if existing and is_alive(existing):
                started.append(existing)
                continue
            port = processes.allocate_port(node.bind_host, reg.used_ports())
            spec = llama_rpc_args.build_rpc_server_launch(
                host=node.bind_host, port=port, gpu_index=gpu, virtual=gpu in node.virtual_gpus,
                cache_dir=str(node.rpc_cache_dir))
            log = node.logs_dir / f"{instance.id}-{instance.name}.rpc{gpu}.log"
            started.append(_spawn(instance, node, executable + spec.args, spec.env, port, log, "rpc", gpu, spec))
    for record in started:
        wait_listening(record, node.bind_host, timeout)
    return started


def wait_listening(record: BackendRecord, host: str, timeout: float) -> None:
    """An RPC server speaks llama.cpp's binary protocol, not HTTP: ready = accepts TCP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(record):
            processes.reap_children()
            raise BackendFailed(f"{record.describe()} exited during start-up{_exit_detail(record)}; last log lines:\n"
                                f"{last_log_lines(record)}")
        try:
            with socket.create_connection((host, record.port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise BackendFailed(f"{record.describe()} not listening on port {record.port} after {timeout:.0f} s; "
                        f"last log lines:\n{last_log_lines(record)}")


def last_log_lines(record: BackendRecord, n: int = LOG_LINES_IN_ERRORS) -> str:
    return last_log_lines_of(Path(record.log_path), n)


def last_log_lines_of(log: Path, n: int = LOG_LINES_IN_ERRORS) -> str:
    try:
        return "".join(tail_lines(log, n)).rstrip()
    except FileNotFoundError:
        return "(no log file)"


def _exit_detail(record: BackendRecord) -> str:
    status = exit_status(record)
    return status.describe() if status is not None else ""


HEALTH_POLL_MIN_S = 0.02
HEALTH_POLL_MAX_S = 0.25


def wait_healthy(
    record: BackendRecord, host: str, timeout: float, paths: tuple[str, ...] = ("/health", "/v1/models")
) -> str:
    """Poll the health endpoints until one answers 200; returns the path that did. The first
    polls come quickly (a llama.cpp server on a small model is up in tens of milliseconds),
    later ones every HEALTH_POLL_MAX_S (vLLM takes a minute or more)."""
    deadline = time.monotonic() + timeout
    delay = HEALTH_POLL_MIN_S
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if not is_alive(record):
                processes.reap_children()
                raise BackendFailed(
                    f"backend exited during start-up{_exit_detail(record)}; last log lines:\n{last_log_lines(record)}"
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
            time.sleep(delay)
            delay = min(delay * 1.5, HEALTH_POLL_MAX_S)
    raise BackendFailed(
        f"backend not healthy after {timeout:.0f} s on port {record.port}; "
        f"last log lines:\n{last_log_lines(record)}"
    )


def mark_healthy(record: BackendRecord, node: NodeContext, path: str) -> None:
    """Remember that this backend answered ``path``: the agent's probes start from here (never
    during a long start-up, which the health check's own timeout bounds)."""
    reg = registry(node)
    with reg.lock:
        current = reg.read(record.key)
        if current is not None and current.pid == record.pid and not current.stopping:
            reg.save(current.model_copy(update={"healthy_path": path}))


def stop(instance_id: int, node: NodeContext, grace: float = 10.0) -> bool:
    """Stop everything this node runs for the instance (its llama-server first, then
    its RPC servers) and forget it: SIGTERM, SIGKILL after ``grace`` s; a container is
    removed too. Returns True if a backend was running."""
    reg = registry(node)
    with reg.lock:
        stopping = [r.model_copy(update={"stopping": True}) for r in reg.of_instance(instance_id)]
        for record in stopping:
            reg.save(record)
    # Terminate outside the lock: stopping several backends at once must not queue up.
    was_running = False
    for record in stopping:
        was_running = runtime_records.runtime_of(record).stop(record, grace) or was_running
    processes.reap_children()
    with reg.lock:
        for record in stopping:
            current = reg.read(record.key)
            if current is not None and current.pid == record.pid:
                reg.remove(record)
    return was_running
