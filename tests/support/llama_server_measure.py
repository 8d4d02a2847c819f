"""Run the pinned llama-server (b11434, built for the CPU by scripts/build-llama-cpp.sh) the way
a gpufleet node does, and read what it allocated.

The command line is :func:`gpufleet.core.backends.llama_cpp.build_launch`'s for a CPU
placement (gpufleet's default ``--ctx-size``, ``--n-gpu-layers 0``, ``--parallel 1``
unless the case sets them) plus ``-lv 4`` (b11434 prints its buffer lines only at
verbosity 4) and ``-t 2``. After ``/health`` answers, one prompt of n_ubatch + 64
tokens (more than a micro-batch, so the compute buffer is used in full) is sent, then
the process's peak RSS (VmHWM) is read from /proc and the server is stopped. Buffer
lines parsed from its log::

    load_tensors:   CPU_Mapped model buffer size =    35.51 MiB
    load_tensors:   CPU_REPACK model buffer size =    20.00 MiB
    llama_kv_cache:        CPU KV buffer size =     2.00 MiB     (twice for SWA models)
    llama_context:        CPU  output buffer size =     0.12 MiB
    sched_reserve:        CPU compute buffer size =     7.52 MiB
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.core.backends.llama_cpp import build_launch
from gpufleet.core.estimation.llama_params import DEFAULT_CONTEXT, parse_llama_params
from gpufleet.core.placement_spec import Placement
from gpufleet.core.schemas import DeploymentConfig, ModelSource

MiB = 1 << 20
HOST = "127.0.0.1"
BUILD = Path.home() / ".cache" / "gpufleet" / "llama.cpp-b11434" / "bin" / "llama-server"
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")
_N_CTX_SEQ = re.compile(r"n_ctx_seq\s*=\s*(\d+)")


def server_binary() -> Path:
    """The pinned build; its absence is an error (the test environment builds it)."""
    path = Path(os.environ.get("GPUFLEET_LLAMA_SERVER", BUILD))
    if not path.is_file():
        raise FileNotFoundError(f"llama-server b11434 not found at {path}: run scripts/build-llama-cpp.sh")
    return path


@dataclass
class Measured:
    buffers: dict[str, int] = field(default_factory=dict)  # "model:CPU_Mapped" -> bytes (summed)
    rss_peak: int = 0
    n_ctx_seq: int = 0
    log: str = ""
    command: list[str] = field(default_factory=list)

    def total(self, kind: str, device: str | None = None) -> int:
        return sum(v for k, v in self.buffers.items()
                   if k.startswith(kind + ":") and (device is None or k.endswith(":" + device)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def command(model: Path, params: tuple[str, ...], port: int, context_length: int) -> list[str]:
    config = DeploymentConfig(source=ModelSource(kind="local_path", local_path=str(model)),
                              backend="llama.cpp", backend_params=list(params))
    default_ctx = min(DEFAULT_CONTEXT, context_length) if context_length else DEFAULT_CONTEXT
    launch = build_launch(config, model_path=str(model), alias="measure", host=HOST, port=port,
                          placement=Placement(worker="local", stage="cpu"), default_context=default_ctx)
    return launch.command([str(server_binary())]) + ["-lv", "4", "-t", "2"]


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except (urllib.error.URLError, OSError):
        return 0


def measure(model: Path, params: tuple[str, ...], context_length: int, timeout: float = 240.0) -> Measured:
    port = free_port()
    cmd = command(model, params, port, context_length)
    log_path = model.with_suffix(".log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out = Measured(command=cmd)
    try:
        deadline = time.monotonic() + timeout
        while _get(f"http://{HOST}:{port}/health") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not become healthy (exit {proc.poll()}):\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        text = log_path.read_text(errors="replace")
        m = _N_CTX_SEQ.search(text)
        out.n_ctx_seq = int(m.group(1)) if m else 0
        cfg = parse_llama_params(params)
        n_prompt = max(8, min(cfg.ubatch + 64, (out.n_ctx_seq or 512) - 16))
        body = json.dumps({"prompt": [300 + i % 64 for i in range(n_prompt)], "n_predict": 1}).encode()
        req = urllib.request.Request(f"http://{HOST}:{port}/completion", body, {"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=timeout).read()
        with open(f"/proc/{proc.pid}/status") as f:
            out.rss_peak = int(f.read().split("VmHWM:")[1].split()[0]) * 1024
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out.log = log_path.read_text(errors="replace")
    for m in _BUFFER.finditer(out.log):
        key = f"{m.group(2).lower()}:{m.group(1)}"
        out.buffers[key] = out.buffers.get(key, 0) + round(float(m.group(3)) * MiB)
    return out
