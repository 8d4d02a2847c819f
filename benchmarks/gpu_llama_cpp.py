"""gpufleet's llama.cpp path on a real NVIDIA GPU: estimate vs what the process really holds.

For a few synthetic llama models (1-3 GiB, F16 and Q8_0, 4k and 16k context, flash attention on
and off) this does what a node does for an instance on GPU 0 -- gpufleet's estimate for that GPU,
the command line from :func:`gpufleet.core.backends.llama_cpp.build_launch`, the process started
with :mod:`gpufleet.node.processes` -- then times launch -> ``/health`` 200, sends one ~1,500-token
chat request, and compares the estimate's VRAM (GPU 0) and RAM with ``nvidia-smi``'s per-process
memory and the process RSS. llama.cpp's own buffer lines (``-lv 4``) show where each buffer went;
a ``CUDA0`` model buffer proves the model ran on the GPU.

Usage (on a node with NVIDIA GPUs and a CUDA build of llama-server)::

    GPUFLEET_LLAMA_SERVER=/path/to/llama-server PYTHONPATH=. python benchmarks/gpu_llama_cpp.py

Options: ``--allow-cpu`` runs the same path with small models on the CPU when no NVIDIA GPU is
found (to test this script on a machine without a GPU); ``--out DIR`` (default ``$OUT``, else
``./gpu-out``) receives ``results.md``, ``results.json`` and ``server-logs.txt``;
``--budget-s`` bounds the model/launch/measure phase (cases not started in time are skipped).
``benchmarks/gpu_check.sh`` is the one-command wrapper (venv, CUDA build, this script).

The models are real GGUF files whose tensor data is all zeros, written sparse (header from
``tests/support/synthetic_models.py``, then a truncate), so a 3 GiB model costs a few MiB of disk
and no time; llama.cpp still reads, uploads and computes with every byte. The vocabulary is an
SPM one with byte fallback and a ChatML template (as ``gpufleet.demo.tiny_model``), so chat
requests work; all-zero weights make every logit equal, and ``ignore_eos`` keeps generation going.

Needs only gpufleet's pure core and node helpers (pydantic) and the standard library; pynvml
(nvidia-ml-py) for the GPUs. Every case is independent: a failure is recorded and the next
case runs. Nothing here is imported by gpufleet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gpufleet.core.backends.llama_cpp import build_launch  # noqa: E402
from gpufleet.core.estimation import EstimateOptions, estimate  # noqa: E402
from gpufleet.core.estimation.llama_params import DEFAULT_CONTEXT  # noqa: E402
from gpufleet.core.schemas import DeploymentConfig, GpuInfo, ModelMetadata, ModelSource, Placement  # noqa: E402
from gpufleet.node.inventory import detect_nvidia_gpus  # noqa: E402
from gpufleet.node.processes import allocate_port, spawn, terminate  # noqa: E402
from tests.support.synthetic_models import (  # noqa: E402
    F16,
    Q8_0,
    LlamaShape,
    gguf_header,
    llama_metadata,
    llama_tensors,
)

MiB = 1 << 20
HOST = "127.0.0.1"
SERVER_ENV = "GPUFLEET_LLAMA_SERVER"
LOG_VERBOSITY = "4"  # b11434 prints its buffer-size lines only at verbosity 4
#: llama.cpp's buffer lines, e.g. "load_tensors:   CUDA0 model buffer size =  1981.00 MiB"
#: (the same pattern as tests/support/llama_measure.py)
BUFFER_LINE = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")
OFFLOADED_LINE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
LOG_KEEP = re.compile(r"buffer size|offloaded|CUDA|ggml_cuda|error|Error|failed|flash_attn|n_ctx|"
                      r"device|VRAM|model loaded|listening", re.IGNORECASE)


def now() -> str:
    return time.strftime("%H:%M:%S")


def say(msg: str) -> None:
    print(f"[{now()}] {msg}", flush=True)


# --- synthetic models ---------------------------------------------------------------------------

# gguf-py's TokenType values (the GGUF spec's token types)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 5, 6
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def spm_vocab(n_vocab: int) -> tuple[list[str], list[int]]:
    """The tiny model's SPM vocabulary (``gpufleet.demo.tiny_model.build_vocab``, rebuilt here so
    this script needs neither gguf-py nor numpy): specials, the 256 byte tokens where byte fallback
    looks, single printable characters, the ChatML markers, then unused padding to ``n_vocab``.
    Without merges every character is one token, so a prompt of N characters is ~N tokens."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    for piece in ["\u2581"] + [chr(c) for c in range(33, 127)]:
        tokens.append(piece)
        types.append(TOKEN_NORMAL)
    for marker in ("<|im_start|>", "<|im_end|>"):
        tokens.append(marker)
        types.append(TOKEN_CONTROL)
    for i in range(len(tokens), n_vocab):
        tokens.append(f"<unused{i}>")
        types.append(TOKEN_UNUSED)
    return tokens, types


def write_model(path: Path, shape: LlamaShape, name: str) -> tuple[int, bytes]:
    """A loadable llama GGUF with all-zero tensor data, written sparse. Returns (size, header)."""
    tokens, types = spm_vocab(shape.n_vocab)
    if len(tokens) != shape.n_vocab:
        raise ValueError(f"n_vocab {shape.n_vocab} is smaller than the base vocabulary ({len(tokens)})")
    meta = llama_metadata(shape, name)
    meta.update({
        "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": CHATML_TEMPLATE,
    })
    head, data = gguf_header(meta, llama_tensors(shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(len(head) + data)  # zeros, without writing them
    return len(head) + data, head


def read_metadata(path: Path, size: int, head: bytes) -> tuple[ModelMetadata, str]:
    """The model's metadata the way the server reads it (gpufleet.sources), or, where the sources
    layer cannot be imported (it needs httpx), straight from the core GGUF parser."""
    try:
        from gpufleet.sources.local import read_local_metadata

        return read_local_metadata(str(path))[1], "gpufleet.sources.local"
    except ImportError as exc:  # also raised by the lazy imports inside read_local_metadata
        from gpufleet.core.gguf import parse_gguf_header
        from gpufleet.core.model_metadata import metadata_from_gguf

        return metadata_from_gguf(parse_gguf_header(head, file_size=size), size), f"core parser ({exc})"


# --- cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # key into MODELS
    params: tuple[str, ...]  # --backend-param values (besides -lv)
    note: str = ""


# GPU sizes: ~1.8 GiB F16, ~1.0 GiB Q8_0 of the same shape, ~2.9 GiB F16 with GQA.
GPU_MODELS = {
    "f16-1.8g": LlamaShape(n_layers=16, n_embd=2048, n_heads=16, n_kv_heads=16, n_ff=5632, context=16384,
                           n_vocab=32000, weight_type=F16, file_type=1),
    "q8-1.0g": LlamaShape(n_layers=16, n_embd=2048, n_heads=16, n_kv_heads=16, n_ff=5632, context=16384,
                          n_vocab=32000, weight_type=Q8_0, file_type=7),
    "f16-2.9g-gqa": LlamaShape(n_layers=20, n_embd=2560, n_heads=20, n_kv_heads=4, n_ff=6912, context=16384,
                               n_vocab=32000, weight_type=F16, file_type=1),
    # the shape of the 2026-12-04 H200 measurements the CUDA constants come from (CUDA0 model 1981 MiB,
    # KV 128 MiB at 4096; gpufleet/core/estimation/cuda_overhead.py), to re-check them
    "f16-2.0g-h200": LlamaShape(n_layers=16, n_embd=2048, n_heads=16, n_kv_heads=4, n_ff=8192, context=32768,
                                n_vocab=32000, weight_type=F16, file_type=1),
}
# CPU sizes (--allow-cpu without a GPU): the same structure, tens of MiB, so 2 cores cope.
CPU_MODELS = {
    "f16-1.8g": replace(GPU_MODELS["f16-1.8g"], n_layers=4, n_embd=512, n_heads=4, n_kv_heads=4, n_ff=1408),
    "q8-1.0g": replace(GPU_MODELS["q8-1.0g"], n_layers=4, n_embd=512, n_heads=4, n_kv_heads=4, n_ff=1408),
    "f16-2.9g-gqa": replace(GPU_MODELS["f16-2.9g-gqa"], n_layers=4, n_embd=640, n_heads=5, n_kv_heads=1,
                            n_ff=1792),
    "f16-2.0g-h200": replace(GPU_MODELS["f16-2.0g-h200"], n_layers=4, n_embd=512, n_heads=4, n_kv_heads=1,
                             n_ff=2048),
}
CASES = [
    Case("f16-ctx4k-default", "f16-1.8g", (), f"no --ctx-size: gpufleet's default ({DEFAULT_CONTEXT})"),
    Case("q8-ctx16k", "q8-1.0g", ("--ctx-size=16384",)),
    Case("f16-ctx16k-fa-off", "f16-1.8g", ("--ctx-size=16384", "--flash-attn=off")),
    Case("f16-gqa-ctx16k", "f16-2.9g-gqa", ("--ctx-size=16384",)),
    Case("h200-shape-ctx4k", "f16-2.0g-h200", ("--ctx-size=4096",), "nvidia-smi 2874 MiB on the H200, 2026-12-04"),
    Case("h200-shape-ngl8", "f16-2.0g-h200", ("--ctx-size=4096", "--n-gpu-layers=8"),
         "partial offload: nvidia-smi 1786 MiB on the H200, 2026-12-04"),
]


@dataclass
class Result:
    case: str
    model: str
    params: list[str]
    note: str = ""
    ok: bool = False
    error: str | None = None
    model_bytes: int = 0
    metadata_via: str = ""
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    est_known: bool = False
    est_vram_mib: float | None = None
    est_vram_parts_mib: dict[str, float] = field(default_factory=dict)
    est_ram_mib: float | None = None
    est_ram_parts_mib: dict[str, float] = field(default_factory=dict)
    est_context: int = 0
    est_layers: str = ""
    launch_to_healthy_s: float | None = None
    smi_after_load_mib: float | None = None
    smi_after_prompt_mib: float | None = None
    smi_source: str = ""
    nvml_used_delta_mib: float | None = None
    rss_after_load_mib: float | None = None
    rss_after_prompt_mib: float | None = None
    rss_peak_mib: float | None = None
    vram_error_pct: float | None = None
    ram_error_pct: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tps: float | None = None
    gen_tps: float | None = None
    request_s: float | None = None
    buffers_mib: dict[str, float] = field(default_factory=dict)
    offloaded: str = ""
    on_gpu: bool = False
    exit_code: int | None = None
    log_excerpt: str = ""


# --- measuring ----------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process in MiB (empty when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        if m:
            out[key] = int(m.group(1)) / 1024
    return out


def smi_process_mib(pid: int) -> tuple[float | None, str]:
    """nvidia-smi's used memory of `pid` (MiB), and where the number came from. In a container
    nvidia-smi may show host pids: with exactly one compute process it is taken, and said so."""
    if not shutil.which("nvidia-smi"):
        return None, "no nvidia-smi"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"nvidia-smi failed: {exc}"
    rows = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].replace(".", "").isdigit():
            rows.append((int(parts[0]), float(parts[1])))
    for row_pid, mib in rows:
        if row_pid == pid:
            return mib, "nvidia-smi (pid)"
    if len(rows) == 1:
        return rows[0][1], f"nvidia-smi (only compute app, pid {rows[0][0]} != {pid})"
    return None, f"nvidia-smi: pid {pid} not among {rows}"


class Nvml:
    """GPU 0's used memory through NVML (a second opinion to nvidia-smi's per-process number)."""

    def __init__(self, enabled: bool = True) -> None:
        self.handle: Any = None
        if not enabled:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.pynvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML: no second opinion
            self.handle = None

    def used_mib(self) -> float | None:
        if self.handle is None:
            return None
        try:
            return float(self.pynvml.nvmlDeviceGetMemoryInfo(self.handle).used) / MiB
        except Exception:  # noqa: BLE001
            return None


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:2000].decode(errors="replace")
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw[:2000].decode(errors="replace")


def wait_healthy(base: str, pid: int, timeout: float) -> float:
    """Seconds until /health answers 200; raises if the process exits or time runs out."""
    from gpufleet.node.processes import exit_code

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        code = exit_code(pid)
        if code is not None:
            raise RuntimeError(f"llama-server exited with code {code} before it was healthy")
        try:
            status, _ = http_json(f"{base}/health", timeout=2.0)
            if status == 200:
                return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"llama-server not healthy after {timeout:.0f} s")


def parse_log(text: str) -> tuple[dict[str, float], str]:
    buffers: dict[str, float] = {}
    for m in BUFFER_LINE.finditer(text):
        key = f"{m.group(1)} {m.group(2)}"
        buffers[key] = round(buffers.get(key, 0.0) + float(m.group(3)), 2)
    off = OFFLOADED_LINE.search(text)
    return buffers, (f"{off.group(1)}/{off.group(2)}" if off else "")


def excerpt(text: str, tail: int = 40, limit: int = 400) -> str:
    lines = text.splitlines()
    kept = [ln for ln in lines if LOG_KEEP.search(ln)][:limit]
    return "\n".join([*kept, "--- last lines ---", *lines[-tail:]])


def pct(est: float | None, got: float | None) -> float | None:
    if est is None or not got:
        return None
    return round((est - got) / got * 100, 1)


# --- one case -----------------------------------------------------------------------------------


def run_case(case: Case, model: Path, model_bytes: int, head: bytes, gpu: GpuInfo | None, server: str,
             work: Path, nvml: Nvml, prompt_chars: int, max_tokens: int, health_timeout: float) -> Result:
    res = Result(case=case.name, model=case.model, params=list(case.params), note=case.note, model_bytes=model_bytes)
    pid = start_time = None
    log = work / f"{case.name}.log"
    try:
        meta, res.metadata_via = read_metadata(model, model_bytes, head)
        params = [*case.params, f"-lv={LOG_VERBOSITY}"]  # a user parameter, as an operator would pass it
        gpu_memory = (gpu.memory_total,) if gpu else ()
        est = estimate(meta, EstimateOptions(backend="llama.cpp", backend_params=tuple(params), gpu_memory=gpu_memory))
        res.est_known = est.known
        if not est.known:
            raise RuntimeError(f"estimate unknown: {est.reason}")
        res.est_context, res.est_layers = est.context_size, f"{est.gpu_layers}/{est.total_layers}"
        res.est_ram_mib = round(est.ram / MiB, 1)
        res.est_ram_parts_mib = {k: round(getattr(est.host, k) / MiB, 1)
                                 for k in ("weights", "kv_cache", "compute", "output", "overhead")}
        if gpu:
            g0 = est.gpus[0]
            res.est_vram_mib = round(est.vram[0] / MiB, 1)
            res.est_vram_parts_mib = {k: round(getattr(g0, k) / MiB, 1)
                                      for k in ("weights", "kv_cache", "compute", "output", "overhead")}

        placement = Placement(
            worker="bench", gpu_indexes=[gpu.index] if gpu else [],
            vram_claim={gpu.index: est.claims[0] if est.claims else est.vram[0]} if gpu else {},
            ram_claim=est.ram, gpu_layers=est.gpu_layers, total_layers=est.total_layers,
            offloaded=est.offloaded_to_cpu,
        )
        config = DeploymentConfig(source=ModelSource(kind="local_path", local_path=str(model)),
                                  backend="llama.cpp", backend_params=params)
        port = allocate_port(HOST, set())
        default_ctx = min(DEFAULT_CONTEXT, meta.context_length) if meta.context_length else DEFAULT_CONTEXT
        launch = build_launch(config, model_path=str(model), alias=case.name, host=HOST, port=port,
                              placement=placement, default_context=default_ctx)
        cmd = launch.command([server])
        res.command, res.env = cmd, launch.env
        say(f"  {case.name}: estimate VRAM {res.est_vram_mib} MiB, RAM {res.est_ram_mib} MiB, "
            f"ctx {res.est_context}, layers {res.est_layers}")
        say(f"  {case.name}: {' '.join(launch.args)}  (env {launch.env})")

        used_before = nvml.used_mib()
        t0 = time.monotonic()
        pid, start_time = spawn(cmd, launch.env, log, work)
        base = f"http://{HOST}:{port}"
        healthy_after = wait_healthy(base, pid, health_timeout)
        res.launch_to_healthy_s = round(time.monotonic() - t0, 2)
        say(f"  {case.name}: healthy after {res.launch_to_healthy_s} s (pid {pid}, poll {healthy_after:.2f} s)")
        res.smi_after_load_mib, res.smi_source = smi_process_mib(pid) if gpu else (None, "cpu")
        res.rss_after_load_mib = proc_status(pid).get("VmRSS")

        content = ("the quick brown fox jumps over the lazy dog " * (prompt_chars // 44 + 1))[:prompt_chars]
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "ignore_eos": True, "temperature": 0.0, "stream": False}
        t1 = time.monotonic()
        status, reply = http_json(f"{base}/v1/chat/completions", body, timeout=max(30.0, health_timeout))
        res.request_s = round(time.monotonic() - t1, 2)
        if status != 200:
            raise RuntimeError(f"chat request failed: HTTP {status}: {str(reply)[:500]}")
        usage = reply.get("usage", {}) if isinstance(reply, dict) else {}
        timings = reply.get("timings", {}) if isinstance(reply, dict) else {}
        res.prompt_tokens = usage.get("prompt_tokens", timings.get("prompt_n"))
        res.completion_tokens = usage.get("completion_tokens", timings.get("predicted_n"))
        res.prompt_tps = round(timings["prompt_per_second"], 1) if "prompt_per_second" in timings else None
        res.gen_tps = round(timings["predicted_per_second"], 1) if "predicted_per_second" in timings else None
        if res.gen_tps is None and res.completion_tokens and res.request_s:
            res.gen_tps = round(res.completion_tokens / res.request_s, 1)

        if gpu:
            res.smi_after_prompt_mib, res.smi_source = smi_process_mib(pid)
            used_after = nvml.used_mib()
            if used_before is not None and used_after is not None:
                res.nvml_used_delta_mib = round(used_after - used_before, 1)
        status_now = proc_status(pid)
        res.rss_after_prompt_mib = status_now.get("VmRSS")
        res.rss_peak_mib = status_now.get("VmHWM")
        measured_vram = res.smi_after_prompt_mib if res.smi_after_prompt_mib is not None else res.nvml_used_delta_mib
        res.vram_error_pct = pct(res.est_vram_mib, measured_vram)
        res.ram_error_pct = pct(res.est_ram_mib, res.rss_after_prompt_mib)
        res.ok = True
    except Exception as exc:  # noqa: BLE001 - recorded; the next case runs
        res.error = f"{type(exc).__name__}: {exc}"
        say(f"  {case.name}: FAILED: {res.error}")
        if not isinstance(exc, RuntimeError):
            traceback.print_exc()
    finally:
        if pid is not None and start_time is not None:
            try:
                terminate(pid, start_time, grace=10.0)
            except Exception as exc:  # noqa: BLE001
                say(f"  {case.name}: could not stop pid {pid}: {exc}")
            from gpufleet.node.processes import exit_code

            res.exit_code = exit_code(pid)
        text = log.read_text(errors="replace") if log.exists() else ""
        res.buffers_mib, res.offloaded = parse_log(text)
        res.on_gpu = any(k.startswith("CUDA0 model") and v > 0 for k, v in res.buffers_mib.items())
        res.log_excerpt = excerpt(text)
        if gpu and res.ok and not res.on_gpu:
            res.ok = False
            res.error = "no CUDA0 model buffer in llama.cpp's log: the model did not run on the GPU"
    return res


# --- report -------------------------------------------------------------------------------------


def fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def device_buffers(buffers: dict[str, float], device: str) -> str:
    """"model/KV/compute" MiB that llama.cpp logged for one device ("CUDA0", or "CPU" for every
    host buffer: CPU, CPU_Mapped, CUDA_Host, CPU_REPACK)."""
    def on_device(name: str) -> bool:
        if device == "CPU":
            return not name.startswith("CUDA") or name == "CUDA_Host"
        return name == device

    def total(kind: str) -> float | None:
        vals = [v for k, v in buffers.items() if k.split()[1] == kind and on_device(k.split()[0])]
        return round(sum(vals), 1) if vals else None
    return "/".join(fmt(total(k)) for k in ("model", "KV", "compute"))


def table(results: list[Result], device: str) -> str:
    head = ("| case | est VRAM MiB | nvidia-smi MiB | VRAM err % | within max(3 %, 256 MiB) | est RAM MiB | RSS MiB "
            f"| RAM err % | launch→healthy s | prompt tok | prompt tok/s | gen tok/s | {device} model/KV/compute MiB "
            "| status |")
    rows = [head, "|" + "---|" * 14]
    for r in results:
        bufs = device_buffers(r.buffers_mib, device) if r.buffers_mib else "-"
        status = "ok" if r.ok else f"FAILED: {(r.error or '')[:80]}"
        goal = ("yes" if abs(r.est_vram_mib - r.smi_after_prompt_mib) <= max(0.03 * r.smi_after_prompt_mib, 256)
                else "NO") if r.est_vram_mib is not None and r.smi_after_prompt_mib else "-"
        rows.append(f"| {r.case} | {fmt(r.est_vram_mib)} | {fmt(r.smi_after_prompt_mib)} | {fmt(r.vram_error_pct)} "
                    f"| {goal} | {fmt(r.est_ram_mib)} | {fmt(r.rss_after_prompt_mib)} | {fmt(r.ram_error_pct)} "
                    f"| {fmt(r.launch_to_healthy_s)} | {fmt(r.prompt_tokens)} | {fmt(r.prompt_tps)} "
                    f"| {fmt(r.gen_tps)} | {bufs} | {status} |")
    return "\n".join(rows)


def list_devices(server: str) -> tuple[list[str], str, str]:
    """(CUDA device lines, full --list-devices output, --version output)."""
    outputs = []
    for flag in ("--list-devices", "--version"):
        try:
            p = subprocess.run([server, flag], capture_output=True, text=True, timeout=60, check=False)
            outputs.append((p.stdout + p.stderr).strip() + ("" if p.returncode == 0 else f"\n(exit {p.returncode})"))
        except (OSError, subprocess.SubprocessError) as exc:
            outputs.append(f"could not run {server} {flag}: {exc}")
    cuda = [ln.strip() for ln in outputs[0].splitlines() if re.match(r"\s*CUDA\d+:", ln)]
    return cuda, outputs[0], outputs[1]


def find_server(arg: str | None) -> str | None:
    for candidate in (arg, os.environ.get(SERVER_ENV)):
        if candidate:
            return shutil.which(candidate) or (candidate if Path(candidate).exists() else None)
    home = os.environ.get("GPUFLEET_LLAMA_CPP_HOME") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpufleet" / "llama.cpp-b11434")
    built = Path(home) / "bin" / "llama-server"
    if built.exists():
        return str(built)
    return shutil.which("llama-server")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--allow-cpu", action="store_true", help="without an NVIDIA GPU, run small models on the CPU")
    ap.add_argument("--llama-server", help=f"llama-server binary (default: ${SERVER_ENV}, the build dir, PATH)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-out", help="results directory (default: $OUT)")
    ap.add_argument("--budget-s", type=float, default=180.0, help="time for writing models and all cases")
    ap.add_argument("--cases", help="comma-separated case names (default: all)")
    ap.add_argument("--keep-models", action="store_true")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
                              "platform": platform.platform(), "errors": []}

    def finish(results: list[Result], code: int) -> int:
        report["results"] = [{k: v for k, v in asdict(r).items() if k != "log_excerpt"} for r in results]
        report["wall_s"] = round(time.monotonic() - started, 1)
        md = [f"# gpufleet llama.cpp GPU check ({report['started']})", "",
              f"- mode: {report.get('mode')}; GPUs: {report.get('gpus')}",
              f"- llama-server: {report.get('llama_server')} ({report.get('llama_version', '').splitlines()[:1]})",
              f"- CUDA devices (--list-devices): {report.get('cuda_devices')}",
              *[f"- ERROR: {e}" for e in report["errors"]], "",
              table(results, "CUDA0" if report.get("mode") == "gpu" else "CPU"), "",
              "VRAM err % = (estimate - nvidia-smi after the prompt) / nvidia-smi; RAM err % = (estimate - RSS) / RSS.",
              "Per-case estimate terms, buffers, commands and log excerpts are in results.json / server-logs.txt."]
        (out / "results.md").write_text("\n".join(md) + "\n")
        (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        with (out / "server-logs.txt").open("w") as f:
            for r in results:
                f.write(f"===== {r.case}: {' '.join(r.command)}\n{r.log_excerpt}\n\n")
        print("\n" + "\n".join(md), flush=True)
        say(f"wrote {out}/results.md, results.json, server-logs.txt ({report['wall_s']} s)")
        return code

    # (a) GPUs, with the node's own inventory code
    try:
        gpus = detect_nvidia_gpus()
    except Exception as exc:  # noqa: BLE001
        gpus = []
        report["errors"].append(f"GPU detection failed: {type(exc).__name__}: {exc}")
    report["gpus"] = [f"{g.index}: {g.name} {g.memory_total / MiB:.0f} MiB" for g in gpus]
    say(f"NVIDIA GPUs (gpufleet.node.inventory): {report['gpus'] or 'NONE'}")
    gpu = gpus[0] if gpus else None
    if gpu is None:
        msg = "no NVIDIA GPU found through NVML (pynvml missing, no driver, or no device)"
        if not args.allow_cpu:
            report["mode"] = "none"
            report["errors"].append(msg + "; rerun with --allow-cpu to test the path on the CPU")
            say(f"ERROR: {msg}")
            return finish([], 2)
        say(f"{msg}: --allow-cpu, so running SMALL models on the CPU (no VRAM figures)")
    report["mode"] = "gpu" if gpu else "cpu"

    # (b) the llama-server build and its devices
    server = find_server(args.llama_server)
    report["llama_server"] = server
    if server is None:
        report["errors"].append(f"no llama-server: set ${SERVER_ENV} or --llama-server")
        return finish([], 2)
    cuda, listing, version = list_devices(server)
    report.update(cuda_devices=cuda, list_devices=listing, llama_version=version)
    say(f"llama-server {server}\n{version}\n--list-devices:\n{listing}")
    if gpu and not cuda:
        report["errors"].append("llama-server --list-devices shows no CUDA device: not a CUDA build, "
                                "or it cannot see the GPU; the cases will run but not on the GPU")
        say("ERROR: " + report["errors"][-1])

    # (c) models, (d) cases
    models = GPU_MODELS if gpu else CPU_MODELS
    cases = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    prompt_chars, max_tokens, health_timeout = (1500, 128, 120.0) if gpu else (300, 16, 120.0)
    work = Path(tempfile.mkdtemp(prefix="gf-gpu-bench-"))
    results: list[Result] = []
    nvml = Nvml(enabled=gpu is not None)
    written: dict[str, tuple[Path, int, bytes]] = {}
    try:
        for case in cases:
            remaining = args.budget_s - (time.monotonic() - started)
            if remaining < 15:
                results.append(Result(case=case.name, model=case.model, params=list(case.params),
                                      error=f"skipped: budget of {args.budget_s:.0f} s used up"))
                say(f"{case.name}: skipped (budget)")
                continue
            say(f"case {case.name} ({case.model}, params {list(case.params)})")
            try:
                if case.model not in written:
                    path = work / f"{case.model}.gguf"
                    size, head = write_model(path, models[case.model], case.model)
                    written[case.model] = (path, size, head)
                    say(f"  wrote {path} ({size / MiB:.0f} MiB, sparse)")
                path, size, head = written[case.model]
            except Exception as exc:  # noqa: BLE001
                results.append(Result(case=case.name, model=case.model, params=list(case.params),
                                      error=f"writing the model failed: {type(exc).__name__}: {exc}"))
                traceback.print_exc()
                continue
            results.append(run_case(case, path, size, head, gpu, server, work, nvml, prompt_chars, max_tokens,
                                    min(health_timeout, max(10.0, remaining - 5))))
    finally:
        if not args.keep_models:
            shutil.rmtree(work, ignore_errors=True)
    # (e) report
    failed = [r.case for r in results if not r.ok]
    if failed:
        report["errors"].append(f"cases failed or skipped: {failed}")
    return finish(results, 1 if failed or report["errors"] else 0)


if __name__ == "__main__":
    raise SystemExit(main())
