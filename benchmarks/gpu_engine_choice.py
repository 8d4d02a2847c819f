"""On a node with NVIDIA GPUs: which llama.cpp would gpufleet's node run a GPU placement on?

Run by ``benchmarks/gpu_check.sh`` after the CUDA build. It asks the node's own code: every
llama.cpp server found with the devices its ``--list-devices`` reports, the program chosen for
a placement on GPU 0 (device kind ``cuda``: it must be the CUDA build), the ``--list-devices``
text, and what the node would report to the server at registration. Prints JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gpufleet.core.backends import llama_cpp
from gpufleet.core.schemas import DeploymentConfig, ModelSource, Placement
from gpufleet.node import engines
from gpufleet.node.context import NodeContext
from gpufleet.runtimes import llama_server


def main() -> int:
    node = NodeContext("gpu-node", Path("/tmp/gf-node"), "127.0.0.1", frozenset(), ((0, 143_155 << 20),))
    desc = llama_cpp.build_launch(DeploymentConfig(source=ModelSource(local_path="/m.gguf")), model_path="/m.gguf",
                                  alias="m", host="127.0.0.1", port=40000,
                                  placement=Placement(worker="gpu-node", gpu_indexes=[0]), default_context=4096)
    device = node.device_kind(list(desc.gpu_indexes))
    result: dict[str, object] = {"device_kind_of_gpu0": device}
    servers = llama_server.installed()
    result["servers"] = [{"location": s.location, "version": s.version, "devices": s.devices, "flags": len(s.flags)}
                         for s in servers]
    try:
        program = engines.resolve_program(desc, node, device)
        result["chosen_for_gpu0"] = program
        listing = subprocess.run([*program, "--list-devices"], capture_output=True, text=True, timeout=60)
        result["list_devices"] = (listing.stdout + listing.stderr).strip().splitlines()[-4:]
    except engines.EngineUnavailable as exc:
        result["refused"] = str(exc)
    result["env_for_gpu0"] = {"CUDA_VISIBLE_DEVICES": desc.env["CUDA_VISIBLE_DEVICES"]}
    print(json.dumps(result, indent=2))
    return 0 if result.get("chosen_for_gpu0") else 1


if __name__ == "__main__":
    sys.exit(main())
