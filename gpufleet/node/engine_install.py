"""Install an engine version on this node (what an `install-backend` run does).

pip engines (vLLM, vox-box) get a virtual environment per engine version and
device kind under the node's engines root (`gpufleet.runtimes.environments`,
idempotent and serialised by a file lock there). llama.cpp is not pip-installed:
its pinned build comes from `scripts/build-llama-cpp.sh`, which is idempotent and
serialised by its own lock too, so a second run of either waits for the first and
then returns at once. Progress lines go to ``progress`` (the run logger).
"""

from __future__ import annotations

import os
import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path

from gpufleet import orchestration
from gpufleet.core.backends.registry import engine
from gpufleet.core.schemas import EngineInstall
from gpufleet.node import engines
from gpufleet.node.context import NodeContext
from gpufleet.runtimes import environments, llama_rpc, llama_server

#: the build script a node runs; `GPUFLEET_LLAMA_CPP_BUILD_SCRIPT` points elsewhere
#: (a node installed without the repository's scripts/)
BUILD_SCRIPT = orchestration.REPO_ROOT / "scripts" / "build-llama-cpp.sh"
BUILD_SCRIPT_ENV = "GPUFLEET_LLAMA_CPP_BUILD_SCRIPT"


class InstallFailed(RuntimeError):
    """The engine version could not be installed here; the message says why and what to do."""


def install(engine_name: str, version: str, device: str, node: NodeContext,
            progress: Callable[[str], None] = lambda _line: None) -> EngineInstall:
    """Install (or find installed) ``engine_name`` ``version`` for ``device`` on ``node``."""
    info = engine(engine_name)
    if info.installer == "pip":
        return environments.install(engine_name, version, device, engines.engines_root(node), progress=progress)
    if engine_name != "llama.cpp":
        raise InstallFailed(f"{engine_name} is not installed by gpufleet; deploy GGUF models with --backend llama.cpp")
    return build_llama_cpp(version, device, node, progress)


def build_script() -> Path:
    return Path(os.environ.get(BUILD_SCRIPT_ENV) or BUILD_SCRIPT)


def build_llama_cpp(version: str, device: str, node: NodeContext,
                    progress: Callable[[str], None]) -> EngineInstall:
    """Run scripts/build-llama-cpp.sh (its step lines are the progress) and report the
    server it built. ``device`` cuda forces CUDA (the script fails clearly without nvcc
    and a driver); cpu leaves the script's own choice, since a CUDA build runs on the
    CPU too and must not be replaced by a CPU-only one in the same install dir."""
    if version != llama_rpc.LLAMA_CPP_BUILD:
        raise InstallFailed(f"scripts/build-llama-cpp.sh builds llama.cpp {llama_rpc.LLAMA_CPP_BUILD} only, "
                            f"not {version}; for another build set GPUFLEET_LLAMA_SERVER on {node.name}")
    script = build_script()
    if not script.is_file():
        raise InstallFailed(f"cannot build llama.cpp {version} on {node.name}: {script} not found (this node has "
                            f"no gpufleet repository checkout); copy scripts/build-llama-cpp.sh there and set "
                            f"{BUILD_SCRIPT_ENV}, or set GPUFLEET_LLAMA_SERVER to a llama-server")
    # the build needs the node's tools, not its gpufleet credentials
    env = {k: v for k, v in os.environ.items() if k not in ("GPUFLEET_API_KEY", "GPUFLEET_JOIN_TOKEN")}
    if device == "cuda":
        env["GPUFLEET_LLAMA_CPP_CUDA"] = "on"
    progress(f"running {script} (log: {llama_rpc.install_dir()}.log)")
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail.append(line)
            progress(line)
        code = proc.wait()
    if code != 0:
        raise InstallFailed(f"scripts/build-llama-cpp.sh failed on {node.name} (exit {code}):\n" + "\n".join(tail))
    built = llama_rpc.rpc_llama_server_executable()
    if built is None:
        raise InstallFailed(f"scripts/build-llama-cpp.sh finished but no llama-server is in "
                            f"{llama_rpc.install_dir() / 'bin'} (GPUFLEET_RPC_LLAMA_SERVER overrides it?)")
    server = llama_server.describe(tuple(built))
    if device not in server.devices:
        raise InstallFailed(f"the llama.cpp build at {server.location} cannot use {device.upper()} "
                            f"(it lists {', '.join(server.devices)})")
    return EngineInstall(engine="llama.cpp", version=server.version, devices=list(server.devices),
                         location=server.location)
