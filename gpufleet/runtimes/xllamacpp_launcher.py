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
    return p


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
    return p


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
