"""How a node runs its backends: as processes, or as Docker containers.

The engine module says *what* to run (a :class:`LaunchDescription`); the node
resolves its program; a runtime decides *how* it runs. Both runtimes take the same
:class:`StartRequest` and hand back a :class:`Started` handle that the node keeps in
its :class:`~gpufleet.node.registry.BackendRecord` (a pid and its start time for a
process; a container id besides for a container, whose main process is a host
process too), so supervision, adoption after an agent restart and stop work the
same way for both. Each record names its runtime: a node restarted with another
runtime still manages what the old one started.

A node's runtime is chosen once, when the agent starts (``gpufleet node --runtime``):
docker when a Docker engine answers, process otherwise. See docs/runtimes.md.
"""

from __future__ import annotations

import signal

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from gpufleet.core.backends.launch import LaunchDescription

if TYPE_CHECKING:
    from gpufleet.node.context import NodeContext
    from gpufleet.node.registry import BackendRecord

RuntimeName = Literal["process", "docker"]
RUNTIMES: tuple[RuntimeName, ...] = ("process", "docker")


class RuntimeUnavailable(RuntimeError):
    """The runtime asked for cannot run on this node; the message says why and how to fix it."""


class StartFailed(RuntimeError):
    """The backend could not be started; nothing it needed is left behind. The message
    names what was refused (the image, the GPU request, the engine's answer)."""


@dataclass(frozen=True)
class StartRequest:
    """One backend to start: the same for every runtime."""

    key: str  # the registry key: "<instance id>" or "<instance id>.rpc<gpu>"
    command: list[str]  # argv with the program as the node resolved it (process, host-runtime image)
    desc: LaunchDescription  # what the engine module described (args, env, GPUs, model path, port)
    env: dict[str, str]  # added to the node's (process) or the image's (container) environment
    port: int
    log_path: Path
    node: NodeContext  # where: bind address, GPUs, home, image overrides, cluster
    labels: dict[str, str] = field(default_factory=dict)  # gpufleet.* names of what this is
    image: str | None = None  # the deployment's image override (container runtimes)
    memory_limit: int | None = None  # bytes; None: no limit


@dataclass(frozen=True)
class Started:
    pid: int
    start_time: int  # /proc/<pid>/stat field 22: tells our process from a reused pid
    container_id: str | None = None
    image: str | None = None


@dataclass(frozen=True)
class ExitStatus:
    """How a backend ended, as far as the runtime knows."""

    code: int | None
    oom_killed: bool = False
    #: the kernel's own words for a process backend's OOM kill (gpufleet.node.oom), if any
    oom_verdict: str | None = None

    def describe(self) -> str:
        if self.code is not None and self.code < 0:  # a process killed by a signal
            try:
                name = signal.Signals(-self.code).name
            except ValueError:
                name = f"signal {-self.code}"
            text = f", killed by {name}"
        else:
            text = f" with code {self.code}" if self.code is not None else ""
        if self.oom_verdict:
            text += f" ({self.oom_verdict})"
        elif self.oom_killed:
            text += " (killed for running out of memory: OOMKilled)"
        return text


class Runtime(Protocol):
    name: RuntimeName

    def start(self, request: StartRequest) -> Started:
        """Start the backend and return once it exists (not once it is healthy).
        Raises :class:`StartFailed`, leaving nothing behind."""
        ...

    def is_alive(self, record: BackendRecord) -> bool: ...

    def stop(self, record: BackendRecord, grace: float) -> bool:
        """Ask it to stop, kill it after ``grace`` seconds, and remove what the runtime
        kept for it (a container). True if it was running."""
        ...

    def exit_status(self, record: BackendRecord) -> ExitStatus | None:
        """Exit code and OOM flag of a backend that ended; None if unknown."""
        ...

    def discard(self, record: BackendRecord) -> None:
        """Forget an ended backend: remove its container once its exit was reported."""
        ...


_cache: dict[RuntimeName, Runtime] = {}


def get(name: RuntimeName) -> Runtime:
    """The runtime object of this process for ``name`` (one Docker client per process)."""
    if name not in _cache:
        if name == "process":
            from gpufleet.node.runtimes.process import ProcessRuntime

            _cache[name] = ProcessRuntime()
        elif name == "docker":
            from gpufleet.node.runtimes.docker import DockerRuntime

            _cache[name] = DockerRuntime.connect()
        else:
            raise RuntimeUnavailable(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
    return _cache[name]


def choose_runtime(name: str | None) -> RuntimeName:
    """``--runtime`` as given, checked; without one, docker when a Docker engine answers
    here and process otherwise (a laptop without Docker keeps working)."""
    from gpufleet.node.runtimes.docker import docker_unreachable_reason

    if name is None:
        return "docker" if docker_unreachable_reason() is None else "process"
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
    if name == "docker" and (reason := docker_unreachable_reason()) is not None:
        raise RuntimeUnavailable(f"--runtime docker, but no Docker engine answers here: {reason}; "
                                 "start dockerd (scripts/start-dockerd.sh) or use --runtime process")
    return name  # type: ignore[return-value]
