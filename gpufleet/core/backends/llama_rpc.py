"""llama.cpp `rpc-server` command lines: the processes that lend a distributed
instance the GPUs of a worker other than its main one.

One RPC server per GPU, so that every GPU is one llama.cpp device and the
placement's ``--tensor-split`` (one proportion per GPU) applies unchanged. A
virtual GPU (declared, not detected) is served by the worker's CPU device: the
process, the protocol and the layer split are real, only the memory behind the
"GPU" is host RAM.

The RPC protocol is unauthenticated (llama.cpp calls it experimental and not
secure): the server binds to the node's own address, which must be on a trusted
network.
"""

from __future__ import annotations

from gpufleet.core.backends.launch import LaunchDescription, Program
from gpufleet.core.backends.registry import LLAMA_CPP

PROGRAM = Program("executable", "rpc-server")

#: The cache of tensors an RPC server keeps on disk (under ``LLAMA_CACHE``/rpc): a
#: restarted instance sends a hash instead of a large tensor again.
CACHE_ENV = "LLAMA_CACHE"


def build_rpc_server_launch(*, host: str, port: int, gpu_index: int, virtual: bool, cache_dir: str,
                            version: str = LLAMA_CPP.default_version) -> LaunchDescription:
    """`rpc-server -H host -p port -c` for one GPU; a virtual GPU is served by ``--device CPU``."""
    args = ["--host", host, "--port", str(port), "--cache"]
    if virtual:
        args += ["--device", "CPU"]
    env = {
        # Each server sees only its GPU, which it exposes as its first device.
        "CUDA_VISIBLE_DEVICES": "" if virtual else str(gpu_index),
        CACHE_ENV: cache_dir,
    }
    return LaunchDescription(engine=LLAMA_CPP.name, version=version, program=PROGRAM, args=args, env=env, port=port,
                             health_paths=(), gpu_indexes=() if virtual else (gpu_index,))


def endpoint(host: str, port: int) -> str:
    """`host:port` as llama-server's ``--rpc`` takes it (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
