"""Between the node's backend records and its runtimes.

:mod:`gpufleet.node.backends` decides *what* starts (an instance's server, an RPC
server) and keeps the registry; this module turns one of its starts into a
runtime's :class:`StartRequest` (labels, memory limit, the deployment's image) and
finds the runtime that owns a record, so that everything after the start —
liveness, exit status, stop — goes to the runtime that started it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from gpufleet.core.backends import llama_cpp, vllm, vox_box
from gpufleet.core.backends.launch import LaunchDescription, Program
from gpufleet.core.backends.registry import LLAMA_ENGINES, engine
from gpufleet.core.schemas import InstanceView
from gpufleet.node.context import NodeContext
from gpufleet.node.registry import BackendRecord
from gpufleet.node.runtimes import Runtime, RuntimeName, StartRequest, get, images

GiB = 1 << 30
#: engines whose RAM use the estimate bounds (llama.cpp loads weights it does not offload into
#: RAM, and nothing else); vLLM and vox-box use host memory the estimate does not model
MEMORY_LIMITED_ENGINES = LLAMA_ENGINES
#: limit = max(claim × factor, claim + headroom); factor 0 turns limits off (GPUFLEET_CONTAINER_MEMORY_FACTOR)
DEFAULT_MEMORY_FACTOR = 2.0
MEMORY_HEADROOM = 1 * GiB


def runtime_of(record: BackendRecord) -> Runtime:
    """The runtime that started the record (a node restarted with another keeps managing it)."""
    return get(record.runtime)


def node_runtime(node: NodeContext) -> RuntimeName:
    return "docker" if node.runtime == "docker" else "process"


def memory_limit(desc: LaunchDescription, instance: InstanceView, role: str) -> int | None:
    """The container memory limit from the placement's RAM claim, with headroom, for the
    engines whose RAM use the estimate bounds; None (no limit) otherwise."""
    factor = float(os.environ.get("GPUFLEET_CONTAINER_MEMORY_FACTOR", DEFAULT_MEMORY_FACTOR))
    claim = instance.placement.ram_claim if instance.placement else 0
    if factor <= 0 or role != "server" or desc.engine not in MEMORY_LIMITED_ENGINES or claim <= 0:
        return None
    return int(max(claim * factor, claim + MEMORY_HEADROOM))


def start_record(instance: InstanceView, node: NodeContext, command: list[str], env: dict[str, str], port: int,
                 log: Path, role: Literal["server", "rpc"], gpu_index: int | None,
                 desc: LaunchDescription) -> BackendRecord:
    """Start the backend on the node's runtime; returns its record (not yet saved).
    Raises :class:`~gpufleet.node.runtimes.StartFailed`, leaving nothing behind."""
    from gpufleet.node.runtimes.docker import labels_for, record_label

    runtime = get(node_runtime(node))
    record = BackendRecord(instance_id=instance.id, instance_name=instance.name, pid=0, start_time=0, port=port,
                           log_path=str(log), command=command, role=role, gpu_index=gpu_index, engine=desc.engine,
                           health_paths=list(desc.health_paths), readiness_timeout_s=desc.readiness_timeout_s,
                           runtime=runtime.name)
    labels = labels_for(cluster=node.cluster, node=node.name, deployment=instance.deployment,
                        instance_id=instance.id, instance_name=instance.name, incarnation=instance.restart_count,
                        role=role, key=record.key)
    labels["gpufleet.record"] = record_label(record)
    request = StartRequest(key=record.key, command=command, desc=desc, env=env, port=port, log_path=log, node=node,
                           labels=labels, image=instance.config.image,
                           memory_limit=memory_limit(desc, instance, role))
    started = runtime.start(request)
    return record.model_copy(update={"pid": started.pid, "start_time": started.start_time,
                                     "container_id": started.container_id})


def fallback_description(command: list[str], env: dict[str, str], port: int) -> LaunchDescription:
    """For a caller that has only a command line (the process runtime needs no more)."""
    return LaunchDescription(engine="llama.cpp", version="", program=Program("executable", Path(command[0]).name),
                             args=command[1:], env=env, port=port)


_PROGRAMS: dict[str, Program] = {"vllm": vllm.PROGRAM, "vox-box": vox_box.PROGRAM}


def pull_image(instance: InstanceView, node: NodeContext, progress: Callable[[int], None]) -> str | None:
    """Before the launch, pull the image the instance's server will run in (docker runtime
    only), reporting the pull's percentage; returns the reference, or None when no image
    is involved. The launch itself pulls too (silently) if the description chose another."""
    if node_runtime(node) != "docker" or instance.placement is None:
        return None
    config = instance.config
    version = config.backend_version or engine(config.backend).default_version
    stub = LaunchDescription(engine=config.backend, version=version,
                             program=_PROGRAMS.get(config.backend, llama_cpp.PROGRAM), args=[],
                             gpu_indexes=tuple(instance.placement.gpu_indexes))
    choice = images.choose_image(stub, node.device_kind(instance.placement.gpu_indexes),
                                 deployment_image=config.image, node_images=dict(node.images),
                                 host_runtime_image=node.host_runtime_image)
    runtime = get("docker")
    images.ensure_image(runtime.client, choice.ref, progress, worker=node.name)  # type: ignore[attr-defined]
    return choice.ref
