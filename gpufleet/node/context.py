"""Identity of the node a flow runs on.

The node agent exports these variables when it starts, so node-local flows find
their node whether they run inside the agent (gpufleet's in-process worker) or
in a subprocess started by a stock Prefect process worker.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


class NotOnANode(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeContext:
    name: str
    home: Path
    bind_host: str
    #: indexes of the GPUs this node declared (`--virtual-gpus`): their share of a
    #: distributed instance is served by an RPC server on the CPU
    virtual_gpus: frozenset[int] = frozenset()
    #: total bytes of each GPU of this node (index -> bytes): vLLM's memory fraction is claim / total
    gpu_memory: tuple[tuple[int, int], ...] = ()
    #: how backends run here (`gpufleet node --runtime`, docs/runtimes.md): "process" or "docker"
    runtime: str = "process"
    #: what the labels of this node's containers name as their cluster (GPUFLEET_CLUSTER, else the server's address)
    cluster: str = ""
    #: per-engine image overrides of this node (`--image ENGINE=REF`): private registries, mirrors
    images: tuple[tuple[str, str], ...] = ()
    #: base image of the host-runtime mode (`--host-runtime-image`): the node's own programs run in it
    host_runtime_image: str | None = None

    def gpu_total(self, index: int) -> int:
        return dict(self.gpu_memory).get(index, 0)

    def device_kind(self, gpu_indexes: list[int] | tuple[int, ...]) -> str:
        """What an instance on these GPUs of this node runs on: ``cuda`` for real GPUs,
        ``cpu`` for none or for declared (virtual) ones, whose memory is simulated and
        whose work the node's CPU does."""
        if not gpu_indexes or all(i in self.virtual_gpus for i in gpu_indexes):
            return "cpu"
        return "cuda"

    @property
    def backends_dir(self) -> Path:
        return self.home / "backends"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def rpc_cache_dir(self) -> Path:
        """Where this node's RPC servers keep tensors they were sent (``rpc-server --cache``)."""
        return self.home / "rpc-cache"

    def export(self) -> None:
        os.environ["GPUFLEET_NODE_NAME"] = self.name
        os.environ["GPUFLEET_NODE_HOME"] = str(self.home)
        os.environ["GPUFLEET_NODE_BIND_HOST"] = self.bind_host
        os.environ["GPUFLEET_NODE_VIRTUAL_GPUS"] = ",".join(str(i) for i in sorted(self.virtual_gpus))
        os.environ["GPUFLEET_NODE_GPU_MEMORY"] = ",".join(f"{i}:{b}" for i, b in self.gpu_memory)
        os.environ["GPUFLEET_NODE_RUNTIME"] = self.runtime
        os.environ["GPUFLEET_NODE_CLUSTER"] = self.cluster
        os.environ["GPUFLEET_NODE_IMAGES"] = json.dumps(dict(self.images))
        os.environ["GPUFLEET_NODE_HOST_RUNTIME_IMAGE"] = self.host_runtime_image or ""


def current_node() -> NodeContext:
    name = os.environ.get("GPUFLEET_NODE_NAME")
    home = os.environ.get("GPUFLEET_NODE_HOME")
    if not name or not home:
        raise NotOnANode(
            "this flow runs node-local work but is not on a gpufleet node "
            "(GPUFLEET_NODE_NAME/GPUFLEET_NODE_HOME unset); route it to a node's work queue"
        )
    virtual = os.environ.get("GPUFLEET_NODE_VIRTUAL_GPUS", "")
    memory = os.environ.get("GPUFLEET_NODE_GPU_MEMORY", "")
    sizes = tuple((int(i), int(b)) for i, b in (pair.split(":") for pair in memory.split(",") if pair))
    return NodeContext(name, Path(home), os.environ.get("GPUFLEET_NODE_BIND_HOST", "127.0.0.1"),
                       frozenset(int(i) for i in virtual.split(",") if i), sizes,
                       runtime=os.environ.get("GPUFLEET_NODE_RUNTIME", "process"),
                       cluster=os.environ.get("GPUFLEET_NODE_CLUSTER", ""),
                       images=tuple(json.loads(os.environ.get("GPUFLEET_NODE_IMAGES") or "{}").items()),
                       host_runtime_image=os.environ.get("GPUFLEET_NODE_HOST_RUNTIME_IMAGE") or None)
