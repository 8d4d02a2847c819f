"""Identity of the node a flow runs on.

The node agent exports these variables when it starts, so node-local flows find
their node whether they run inside the agent (gpufleet's in-process worker) or
in a subprocess started by a stock Prefect process worker.
"""

from __future__ import annotations

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


def current_node() -> NodeContext:
    name = os.environ.get("GPUFLEET_NODE_NAME")
    home = os.environ.get("GPUFLEET_NODE_HOME")
    if not name or not home:
        raise NotOnANode(
            "this flow runs node-local work but is not on a gpufleet node "
            "(GPUFLEET_NODE_NAME/GPUFLEET_NODE_HOME unset); route it to a node's work queue"
        )
    virtual = os.environ.get("GPUFLEET_NODE_VIRTUAL_GPUS", "")
    return NodeContext(name, Path(home), os.environ.get("GPUFLEET_NODE_BIND_HOST", "127.0.0.1"),
                       frozenset(int(i) for i in virtual.split(",") if i))
