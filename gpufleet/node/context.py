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

    @property
    def backends_dir(self) -> Path:
        return self.home / "backends"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def export(self) -> None:
        os.environ["GPUFLEET_NODE_NAME"] = self.name
        os.environ["GPUFLEET_NODE_HOME"] = str(self.home)
        os.environ["GPUFLEET_NODE_BIND_HOST"] = self.bind_host


def current_node() -> NodeContext:
    name = os.environ.get("GPUFLEET_NODE_NAME")
    home = os.environ.get("GPUFLEET_NODE_HOME")
    if not name or not home:
        raise NotOnANode(
            "this flow runs node-local work but is not on a gpufleet node "
            "(GPUFLEET_NODE_NAME/GPUFLEET_NODE_HOME unset); route it to a node's work queue"
        )
    return NodeContext(name, Path(home), os.environ.get("GPUFLEET_NODE_BIND_HOST", "127.0.0.1"))
