"""What an engine module hands the node: how to start one backend (pure).

Every engine (`llama_cpp`, `vllm`, `vox_box`, and llama.cpp's `rpc-server`) is
a pure function from the deployment, its metadata, the placement and the
node-local facts (port, host, model path, GPU sizes) to a
:class:`LaunchDescription`. The description names *what* to run, never *where
it lives*: the node resolves :class:`Program` against what it has installed
(an executable it built or was given, or a Python module inside the engine
version's own environment), and its runtime (a process, a container) decides
*how* it runs. So the same description is golden-tested here, started as a
process on a laptop and as a container on a GPU node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ProgramKind = Literal["executable", "python-module"]


@dataclass(frozen=True)
class Program:
    """The program of a backend: ``executable`` (e.g. ``llama-server``,
    ``rpc-server``) found by the node, or ``python-module`` (e.g.
    ``vllm.entrypoints.openai.api_server``) run with ``python -m`` by the
    interpreter of the engine version's environment."""

    kind: ProgramKind
    name: str


@dataclass(frozen=True)
class LaunchDescription:
    """Everything needed to start one backend, independent of the runtime.

    ``args`` follow the program; ``env`` is added to the node's environment
    (deployment variables first, gpufleet's managed ones over them);
    ``gpu_indexes`` are the node's GPUs the backend must see, and only those
    (``CUDA_VISIBLE_DEVICES`` for a process, device requests for a container);
    ``model_path`` is the weights' path on the node, which a container runtime
    mounts and rewrites. ``health_paths`` are polled in order until one answers
    200 (empty: the backend speaks no HTTP, ready = accepts TCP); a backend not
    ready after ``readiness_timeout_s`` is an ERROR.
    """

    engine: str
    version: str
    program: Program
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    health_paths: tuple[str, ...] = ("/health",)
    readiness_timeout_s: float = 180.0
    gpu_indexes: tuple[int, ...] = ()
    model_path: str | None = None
    #: bytes of /dev/shm a container needs (vLLM's tensor-parallel workers share tensors through it)
    shm_size: int | None = None

    def command(self, program: list[str]) -> list[str]:
        """The full argv once the node has resolved the program to ``program``."""
        return [*program, *self.args]
