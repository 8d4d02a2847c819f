"""Timing of the llama.cpp estimate for a 70B-class model (targets from the estimation issue).

- first estimate of a parsed model (per-model prefix sums built): reported
- re-estimate of the same model under another configuration: target < 1 ms
- sweep of every --gpu-layers value (0..81) over an 8-way tensor split: target < 10 ms

The model is synthetic metadata shaped like Llama-3-70B in Q4_K_M (80 blocks,
8 KV heads of 128, hidden 8192, 128k vocabulary; ``tests/support/gguf_shapes.py``),
since only its header figures matter to the estimate.

    .venv/bin/python benchmarks/estimate_speed.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpufleet.core.estimation import EstimateOptions, estimate  # noqa: E402
from tests.support.gguf_shapes import synthetic_metadata  # noqa: E402

GiB = 1 << 30
GPUS = (80 * GiB,) * 8


def best_of(fn, repeat: int = 50) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3, statistics.median(times) * 1e3


def main() -> int:
    first = []
    for _ in range(20):
        meta = synthetic_metadata()
        t0 = time.perf_counter()
        estimate(meta, EstimateOptions(backend_params=("--ctx-size=8192",), gpu_memory=GPUS))
        first.append((time.perf_counter() - t0) * 1e3)
    meta = synthetic_metadata()
    estimate(meta, EstimateOptions(gpu_memory=GPUS))
    configs = [EstimateOptions(backend_params=("--ctx-size=8192",), gpu_memory=GPUS[:k], gpu_layers=ngl)
               for k in (1, 2, 4, 8) for ngl in (None, 40)]
    counter = iter(range(10**9))

    def reestimate() -> None:
        estimate(meta, configs[next(counter) % len(configs)])

    def sweep() -> None:
        for ngl in range(0, meta.n_layers + 2):
            estimate(meta, EstimateOptions(backend_params=("--ctx-size=8192",), gpu_memory=GPUS,
                                           tensor_split=(1, 1, 1, 1, 1, 1, 1, 1), gpu_layers=ngl))

    re_min, re_med = best_of(reestimate, 2000)
    sw_min, sw_med = best_of(sweep, 50)
    est = estimate(meta, EstimateOptions(backend_params=("--ctx-size=8192",), gpu_memory=GPUS))
    print(f"model: 70B-class Q4_K_M, {meta.tensor_bytes / GiB:.2f} GiB weights, 80 blocks")
    print(f"8 x 80 GiB, ctx 8192: per GPU {[round(v / GiB, 2) for v in est.vram]} GiB, host {est.ram / GiB:.2f} GiB")
    print(f"first estimate (cold per-model cache): median {statistics.median(first):.3f} ms")
    print(f"re-estimate, other configuration:      median {re_med:.4f} ms, best {re_min:.4f} ms (target < 1 ms)")
    print(f"sweep of 82 --gpu-layers values, 8 GPUs: median {sw_med:.3f} ms, best {sw_min:.3f} ms (target < 10 ms)")
    return 0 if re_med < 1 and sw_med < 10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
