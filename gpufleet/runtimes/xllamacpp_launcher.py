"""`llama-server`-compatible command line over the xllamacpp wheel.

xllamacpp runs llama.cpp's native HTTP server in-process but ships no command
line. This launcher accepts the llama-server flags gpufleet emits (and common
tuning flags), maps them onto `xllamacpp.CommonParams`, and refuses any other
flag with a message, so that a deployment never silently runs with a setting
it asked for but did not get.

    python -m gpufleet.runtimes.xllamacpp_launcher --model m.gguf --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's default hides the supported flags
        sys.stderr.write(
            f"gpufleet llama.cpp launcher (xllamacpp): {message}\n"
            "supported flags: " + ", ".join(sorted(SUPPORTED)) + "\n"
            "install a llama-server binary on PATH to use other llama-server flags\n"
        )
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpufleet-llama-server", allow_abbrev=False)
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--alias", "-a")
    p.add_argument("--ctx-size", "-c", type=int, default=4096)
    p.add_argument("--n-gpu-layers", "-ngl", "--gpu-layers", type=int, default=-1)
    p.add_argument("--threads", "-t", type=int)
    p.add_argument("--parallel", "-np", type=int)
    p.add_argument("--batch-size", "-b", type=int)
    p.add_argument("--ubatch-size", "-ub", type=int)
    p.add_argument("--metrics", action="store_true")
    p.add_argument("--no-warmup", action="store_true")
    # Flags that change memory: the estimator honours them, so the launcher must too.
    p.add_argument("--tensor-split", "-ts", type=_split)
    p.add_argument("--main-gpu", "-mg", type=int)
    p.add_argument("--cache-type-k", "-ctk", choices=sorted(CACHE_TYPES))
    p.add_argument("--cache-type-v", "-ctv", choices=sorted(CACHE_TYPES))
    p.add_argument("--flash-attn", "-fa", choices=sorted(FLASH_ATTN), nargs="?", const="on")
    p.add_argument("--no-kv-offload", "-nkvo", action="store_true")
    p.add_argument("--kv-unified", "-kvu", action="store_true")
    p.add_argument("--swa-full", action="store_true")
    return p


#: ggml type ids of the KV cache types llama-server accepts (ggml.h `enum ggml_type`).
CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
               "iq4_nl": 20, "bf16": 30}
#: llama.cpp's `llama_flash_attn_type`: -1 auto, 0 off, 1 on.
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
MAX_DEVICES = 128  # llama.cpp's LLAMA_MAX_DEVICES: the length of CommonParams.tensor_split


def _split(text: str) -> list[float]:
    """`3,1` -> [3.0, 1.0]: llama-server's proportions per device."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tensor-split takes numbers like 3,1, got {text!r}") from None
    if not values or len(values) > MAX_DEVICES or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"--tensor-split needs 1..{MAX_DEVICES} non-negative numbers")
    return values


SUPPORTED = {
    opt for action in build_parser()._actions for opt in action.option_strings if opt != "-h"
} - {"--help"}


def to_params(args: argparse.Namespace) -> Any:
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = args.model
    p.hostnames = [args.host]
    p.port = args.port
    if args.alias:
        p.model_alias = {args.alias}
    p.n_ctx = args.ctx_size
    p.n_gpu_layers = args.n_gpu_layers
    if args.threads:
        p.cpuparams.n_threads = args.threads
        p.cpuparams_batch.n_threads = args.threads
    if args.parallel:
        p.n_parallel = args.parallel
    if args.batch_size:
        p.n_batch = args.batch_size
    if args.ubatch_size:
        p.n_ubatch = args.ubatch_size
    p.endpoint_metrics = args.metrics
    p.warmup = not args.no_warmup
    _memory_params(p, args)
    return p


def _memory_params(p: Any, args: argparse.Namespace) -> None:
    if args.tensor_split:
        p.tensor_split = args.tensor_split + [0.0] * (MAX_DEVICES - len(args.tensor_split))
    if args.main_gpu is not None:
        p.main_gpu = args.main_gpu
    if args.cache_type_k:
        p.cache_type_k = CACHE_TYPES[args.cache_type_k]
    if args.cache_type_v:
        p.cache_type_v = CACHE_TYPES[args.cache_type_v]
    if args.flash_attn:
        p.flash_attn_type = FLASH_ATTN[args.flash_attn]
    p.no_kv_offload = args.no_kv_offload
    p.kv_unified = args.kv_unified
    p.swa_full = args.swa_full


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import xllamacpp

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"gpufleet launcher: starting llama.cpp (xllamacpp) server on {args.host}:{args.port}",
          flush=True)
    server = xllamacpp.Server(to_params(args))
    stop.wait()
    print("gpufleet launcher: stopping", flush=True)
    # llama-server holds no state worth flushing; exiting at once frees the port and
    # memory without waiting for the HTTP threads to wind down.
    del server
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
