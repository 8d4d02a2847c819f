"""Placement speed on generated clusters (pure placement, no database):

    .venv/bin/python benchmarks/placement_throughput.py [--rounds 5]

1. 1,000 single-GPU replicas onto 250 workers × 8 GPUs (goal: < 100 ms in total);
2. 10,000 replicas onto 5,000 workers × 8 GPUs (goal: ≥ 1,500 placements/s);
3. a 70B GGUF (Llama-3-70B Q4_K_M shape: 80 layers, 39.6 GiB of weights) that fits
   only with partial CPU offload, tensor split searched over 16 GPUs (goal: < 1 s);
   plus the same model when nothing fits at all (every stage tried, reasons for every worker).

Each figure is the median of the rounds, timed from the cluster snapshot (ledger
built inside the timing) to the last placement, with the real estimator.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.placement import ClusterSnapshot, GpuSnapshot, PlacementRequest, Placer, Unplaceable, WorkerSnapshot
from gpufleet.core.placement_spec import Placement, PlacementSpec

GiB = 1 << 30


def llama(n_layers: int, weights_gib: float, n_heads: int, n_kv: int, n_embd: int, vocab: int) -> ModelMetadata:
    weights = int(weights_gib * GiB)
    embed = vocab * n_embd * 9 // 16  # Q4_K-ish token embedding (4.5 bits per weight)
    output = vocab * n_embd * 13 // 16  # Q6_K output projection
    per_layer = (weights - embed - output) // n_layers
    return ModelMetadata(
        format="gguf", architecture="llama", file_size=weights, tensor_bytes=weights, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=n_kv, head_dim_k=n_embd // n_heads, head_dim_v=n_embd // n_heads,
        embedding_length=n_embd, feed_forward_length=n_embd * 7 // 2, context_length=8192, vocab_size=vocab,
        layer_bytes=[per_layer] * n_layers, embedding_bytes=embed, output_bytes=output,
    )


MODEL_8B = llama(32, 4.58, 32, 8, 4096, 128256)  # Llama-3-8B Q4_K_M
MODEL_70B = llama(80, 39.6, 64, 8, 8192, 128256)  # Llama-3-70B Q4_K_M


def cluster(workers: int, gpus: int, gpu_gib: float, ram_gib: int = 512) -> ClusterSnapshot:
    return ClusterSnapshot(workers=[
        WorkerSnapshot(name=f"w{i:05d}", memory_total=ram_gib * GiB, labels={"rack": str(i % 10)},
                       gpus=[GpuSnapshot(index=j, name="GPU", memory_total=int(gpu_gib * GiB)) for j in range(gpus)])
        for i in range(workers)
    ])


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bulk(snapshot: ClusterSnapshot, replicas: int, strategy: str) -> list[Placement | Unplaceable]:
    request = PlacementRequest("bench", MODEL_8B, spec=PlacementSpec(strategy=strategy))  # type: ignore[arg-type]
    return Placer(snapshot, request).plan(replicas)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    small, large = cluster(250, 8, 80), cluster(5000, 8, 80)
    for strategy in ("spread", "binpack"):
        t, res = timed(lambda: bulk(small, 1000, strategy), args.rounds)
        assert all(isinstance(r, Placement) for r in res)  # type: ignore[union-attr]
        rows.append((f"1,000 replicas, 250 workers x 8 GPUs, {strategy}", f"{t * 1000:.1f} ms", f"{1000 / t:,.0f}/s",
                     "< 100 ms"))
        t, res = timed(lambda: bulk(large, 10_000, strategy), max(1, args.rounds // 2))
        assert all(isinstance(r, Placement) for r in res)  # type: ignore[union-attr]
        rows.append((f"10,000 replicas, 5,000 workers x 8 GPUs, {strategy}", f"{t * 1000:.0f} ms",
                     f"{10_000 / t:,.0f}/s", ">= 1,500/s"))

    offload = PlacementRequest("big", MODEL_70B, spec=PlacementSpec(cpu_offloading=True))
    sixteen = cluster(1, 16, 3, ram_gib=64)  # 16 x 3 GiB = 48 GiB of VRAM: most, not all, layers fit
    t, res = timed(lambda: Placer(sixteen, offload).place(), args.rounds)
    assert isinstance(res, Placement) and res.offloaded, res
    rows.append((f"70B offload search, 16 GPUs: {res.gpu_layers}/{res.total_layers} layers on GPU",
                 f"{t * 1000:.1f} ms", "-", "< 1 s"))
    spread16 = cluster(16, 1, 2.5, ram_gib=8)  # 16 workers x 1 GPU, too little RAM for the rest on CPU
    none_fits = PlacementRequest("big", MODEL_70B, spec=PlacementSpec(cpu_offloading=True, distributed=True))
    t, res = timed(lambda: Placer(spread16, none_fits).place(), args.rounds)
    assert isinstance(res, Unplaceable) and len(res.reasons) == 16
    rows.append(("70B nothing fits, 16 workers x 1 GPU, all stages + reasons", f"{t * 1000:.1f} ms", "-", "< 1 s"))

    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'time':>10}  {'rate':>10}  goal")
    for case, took, rate, goal in rows:
        print(f"{case:<{width}}  {took:>10}  {rate:>10}  {goal}")


if __name__ == "__main__":
    main()
