"""Run the real llama.cpp server (xllamacpp) on the CPU and read what it allocated.

The server runs in a child process (its threads, logs and memory never touch
the test process): the child records its RSS with xllamacpp imported (the
idle baseline), starts the server with the same settings gpufleet would pass
(model loaded, KV cache and compute buffers reserved, warm-up decode run),
sends one prompt of n_ubatch + 64 tokens (more than a micro-batch, so the compute buffer is
used in full), records its peak RSS (VmHWM) and exits. llama.cpp's own buffer lines are parsed from
its log:

    load_tensors:   CPU_Mapped model buffer size =    35.51 MiB
    llama_context:        CPU  output buffer size =     0.12 MiB
    llama_kv_cache:        CPU KV buffer size =     2.00 MiB
    sched_reserve:        CPU compute buffer size =     7.52 MiB
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.core.estimation.llama_params import parse_llama_params

MiB = 1 << 20
_GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}
_FLASH = {"auto": -1, "off": 0, "on": 1}

_CHILD = r"""
import json, os, sys
import xllamacpp as xlc

cfg = json.loads(sys.argv[1])
def rss():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) * 1024
p = xlc.CommonParams()
p.model.path = cfg.pop("model")
p.hostnames = ["127.0.0.1"]
p.port = cfg.pop("port")
p.n_gpu_layers = 0
p.cpuparams.n_threads = 2
p.cpuparams_batch.n_threads = 2
p.verbosity = 4  # llama.cpp's buffer lines are INFO
for key, value in cfg.items():
    setattr(p, key, value)
print("RSS_IDLE", rss(), flush=True)
server = xlc.Server(p)
# One prompt longer than a micro-batch, so that the compute buffer is used in full.
import urllib.error, urllib.request
n_prompt = min(p.n_ubatch + 64, p.n_ctx // p.n_parallel - 16)
body = json.dumps({"prompt": [300 + i % 64 for i in range(n_prompt)], "n_predict": 1}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{p.port}/completion", body, {"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=120).read()
except urllib.error.HTTPError as exc:
    print("REQUEST_FAILED", exc.read()[:500], flush=True)
    raise
with open("/proc/self/status") as f:
    hwm = int(f.read().split("VmHWM:")[1].split()[0]) * 1024
print("RSS_LOADED", hwm, flush=True)
os._exit(0)
"""

_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")


@dataclass
class Measured:
    """llama.cpp's buffers in bytes (from MiB with 2 decimals, so +-5 KiB), and RSS."""

    buffers: dict[str, int] = field(default_factory=dict)  # "model:CPU_Mapped" -> bytes
    rss_idle: int = 0
    rss_loaded: int = 0
    log: str = ""

    def total(self, kind: str) -> int:
        return sum(v for k, v in self.buffers.items() if k.startswith(kind + ":"))

    @property
    def rss_delta(self) -> int:
        return self.rss_loaded - self.rss_idle


def child_settings(params: tuple[str, ...]) -> dict[str, object]:
    """xllamacpp CommonParams fields for the llama-server flags a case uses."""
    cfg = parse_llama_params(params)
    return {
        "n_ctx": cfg.ctx_size or 4096, "n_parallel": cfg.parallel, "n_batch": cfg.batch, "n_ubatch": cfg.ubatch,
        "cache_type_k": _GGML_TYPES[cfg.cache_k], "cache_type_v": _GGML_TYPES[cfg.cache_v],
        "flash_attn_type": _FLASH[cfg.flash_attn], "no_kv_offload": not cfg.kv_offload,
        "kv_unified": cfg.kv_unified, "swa_full": cfg.swa_full,
    }


def measure(model: Path, params: tuple[str, ...], port: int, timeout: float = 120.0) -> Measured:
    cfg = {"model": str(model), "port": port, **child_settings(params)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    log = proc.stdout + proc.stderr
    out = Measured(log=log)
    for m in _BUFFER.finditer(log):
        key = f"{m.group(2).lower()}:{m.group(1)}"
        out.buffers[key] = out.buffers.get(key, 0) + round(float(m.group(3)) * MiB)
    for m in re.finditer(r"RSS_(IDLE|LOADED) (\d+)", log):
        setattr(out, f"rss_{m.group(1).lower()}", int(m.group(2)))
    if proc.returncode != 0 or not out.rss_loaded:
        raise RuntimeError(f"llama.cpp server failed (exit {proc.returncode}):\n{log[-3000:]}")
    return out
