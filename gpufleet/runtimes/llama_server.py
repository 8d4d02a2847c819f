"""Which llama.cpp server runs an instance on this node, and on which devices it can.

A node may have several llama.cpp servers: one configured (`GPUFLEET_LLAMA_SERVER`),
one on PATH, the pinned build of `scripts/build-llama-cpp.sh` (with CUDA where the
node has the toolkit and a driver), and gpufleet's launcher over the `xllamacpp`
wheel, which is a CPU-only build of llama.cpp. A placement on real NVIDIA GPUs must
run on a build that drives them: a CPU build would serve the model from RAM while
the GPU memory it was placed on stays claimed. So each candidate is asked what it
can use (`llama-server --list-devices`, cached per binary), and a GPU placement that
no candidate can drive is refused with the fix instead of silently run on the CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from gpufleet.core.backends.flags import parse_help_flags
from gpufleet.runtimes import llama_rpc

LAUNCHER = [sys.executable, "-m", "gpufleet.runtimes.xllamacpp_launcher"]
PROBE_TIMEOUT_S = 30.0
#: `--list-devices` lines look like "  CUDA0: NVIDIA H200 (143155 MiB, 142000 MiB free)"
_DEVICE_RE = re.compile(r"^\s*(CUDA|ROCm|HIP|Vulkan|Metal|SYCL|MUSA|CANN)\d*:", re.MULTILINE)
_KIND = {"CUDA": "cuda", "ROCm": "rocm", "HIP": "rocm", "Vulkan": "vulkan", "Metal": "metal",
         "SYCL": "sycl", "MUSA": "musa", "CANN": "cann"}
#: b11434 prints "version: 0.6.0-dev (build 11434, commit …)"; older builds "version: 4589 (abc123)"
_BUILD_RE = re.compile(r"\(build (\d+)|version:\s*(\d+)\s*\(")


class NoLlamaServer(RuntimeError):
    """No llama.cpp server on this node can run the placement; the message says how to get one."""


@dataclass(frozen=True)
class LlamaServer:
    """One llama.cpp server found on this node."""

    command: tuple[str, ...]
    version: str
    devices: tuple[str, ...]  # device kinds it can use, always including "cpu"
    location: str
    flags: tuple[str, ...] = ()  # what its --help lists (deploy-time check of backend parameters)

    def can_use(self, device: str) -> bool:
        return device in self.devices


def llama_server_executable() -> list[str]:
    """The server for CPU work: `GPUFLEET_LLAMA_SERVER` if set, else `llama-server` from
    PATH, else gpufleet's launcher over the xllamacpp wheel."""
    return list(candidates()[0])


def candidates() -> list[tuple[str, ...]]:
    """Every llama.cpp server this node has, in order of preference."""
    found: list[tuple[str, ...]] = []
    configured = os.environ.get("GPUFLEET_LLAMA_SERVER")
    if configured:
        found.append((configured,))
    on_path = shutil.which("llama-server")
    if on_path:
        found.append((on_path,))
    built = llama_rpc.rpc_llama_server_executable()
    if built:
        found.append(tuple(built))
    found.append(tuple(LAUNCHER))
    unique: list[tuple[str, ...]] = []
    for command in found:
        if command not in unique:
            unique.append(command)
    return unique


def llama_server_for(device: str) -> list[str]:
    """The first candidate that can drive ``device`` ("cpu", "cuda", "rocm")."""
    servers = [describe(c) for c in candidates()]
    for server in servers:
        if server.can_use(device):
            return list(server.command)
    checked = "; ".join(f"{s.location} ({', '.join(s.devices)})" for s in servers)
    raise NoLlamaServer(
        f"this node's llama.cpp has no {device.upper()} support (checked: {checked}); "
        f"run scripts/build-llama-cpp.sh on it (builds llama.cpp {llama_rpc.LLAMA_CPP_BUILD} with CUDA when "
        "nvcc and the NVIDIA driver are present) or set GPUFLEET_LLAMA_SERVER to a llama-server built for it"
    )


def installed() -> list[LlamaServer]:
    """What `gpufleet workers` and `backends ls` show for llama.cpp on this node."""
    return [describe(c) for c in candidates()]


def describe(command: tuple[str, ...]) -> LlamaServer:
    if command == tuple(LAUNCHER):
        return _describe_launcher()
    path = Path(command[0])
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return LlamaServer(command, "missing", ("cpu",), f"{path} (not found)")
    return _probe(command, mtime)


@lru_cache(maxsize=32)
def _probe(command: tuple[str, ...], mtime: int) -> LlamaServer:
    """Ask the binary itself (cached per binary and modification time)."""
    del mtime  # part of the cache key only: a rebuilt binary is asked again
    try:
        out = subprocess.run([*command, "--list-devices"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        text = out.stdout + out.stderr
        ver = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        version_text = ver.stdout + ver.stderr
        usage = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return LlamaServer(command, "unknown", ("cpu",), f"{command[0]} (could not run: {exc})")
    flags = tuple(parse_help_flags(usage.stdout + usage.stderr)) if usage.returncode == 0 else ()
    return LlamaServer(command, parse_version(version_text), parse_devices(text), command[0], flags)


def parse_devices(list_devices_output: str) -> tuple[str, ...]:
    """Device kinds from `llama-server --list-devices` ("cpu" always: every build has it)."""
    return ("cpu", *sorted({_KIND[m] for m in _DEVICE_RE.findall(list_devices_output)}))


def parse_version(version_output: str) -> str:
    """`version: 11434 (abc123)` → ``b11434``, llama.cpp's own name for its builds."""
    match = _BUILD_RE.search(version_output)
    return f"b{match.group(1) or match.group(2)}" if match else "unknown"


@lru_cache(maxsize=1)
def _describe_launcher() -> LlamaServer:
    """The xllamacpp wheel from the package registry is a CPU build."""
    try:
        from importlib.metadata import version

        wheel = version("xllamacpp")
    except Exception:  # noqa: BLE001 - not installed: the launcher cannot run at all
        return LlamaServer(tuple(LAUNCHER), "missing", (), "xllamacpp wheel (not installed)")
    from gpufleet.runtimes.xllamacpp_launcher import SUPPORTED

    return LlamaServer(tuple(LAUNCHER), f"xllamacpp-{wheel}", ("cpu",), "xllamacpp wheel (CPU build)",
                       tuple(sorted(SUPPORTED)))
