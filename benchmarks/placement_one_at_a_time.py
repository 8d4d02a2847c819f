"""Placing replicas one call at a time: the incrementally maintained ledger
(:class:`gpufleet.core.placement.LiveLedger`) beside today's path, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/placement_one_at_a_time.py [--rounds 3] [--today-sample 40]

Cases (single-GPU replicas of an 8B Q4_K_M-shaped model, 4.6 GiB, on 80 GiB GPUs, real estimator):

1. 1,000 replicas onto 250 workers × 8 GPUs (goal: < 100 ms in total);
2. 10,000 replicas onto 5,000 workers × 8 GPUs (goal: < 2 s in total);

each for spread and binpack, placed three ways:

- **live**: one ``LiveLedger.place(request, instance)`` call per replica; every call gets a new
  PlacementRequest whose metadata is an equal copy (as a server rebuilds it per instance);
- **today, per call**: what placing one instance does today — a ClusterSnapshot with every
  earlier claim, a new Ledger and Placer, one ``place()``. Too slow to run in full, so the
  first ``--today-sample`` calls are timed and the total is extrapolated from their median
  (each later call is at least as expensive: the snapshot only grows);
- **batch**: ``Placer(snapshot, request).plan(n)``, today's batch path (one call for all).

The live placements are checked to equal the batch placements (same cluster, same order).
Prints medians of ``--rounds`` rounds (live, batch) and the ratio today/live.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.placement_throughput import MODEL_8B, cluster  # noqa: E402
from gpufleet.core.placement import ClusterSnapshot, LiveLedger, Placer, PlacementRequest  # noqa: E402
from gpufleet.core.placement.engine import claim_of  # noqa: E402
from gpufleet.core.placement_spec import Placement, PlacementSpec  # noqa: E402


def request(strategy: str, copy: bool = True) -> PlacementRequest:
    meta = MODEL_8B.model_copy() if copy else MODEL_8B
    return PlacementRequest("bench", meta, spec=PlacementSpec(strategy=strategy), source="hf:bench")  # type: ignore[arg-type]


def live(snapshot: ClusterSnapshot, n: int, strategy: str) -> tuple[float, list[Placement]]:
    """Seconds for n one-at-a-time calls (ledger built once, outside the timing, as a server keeps it)."""
    ledger = LiveLedger(snapshot)
    requests = [request(strategy) for _ in range(n)]
    start = time.perf_counter()
    out = [ledger.place(requests[i], i) for i in range(n)]
    took = time.perf_counter() - start
    assert all(isinstance(p, Placement) for p in out)
    return took, out  # type: ignore[return-value]


def today_per_call(snapshot: ClusterSnapshot, n: int, sample: int, strategy: str) -> tuple[float, float]:
    """(median seconds per call over the first ``sample`` calls, extrapolated total for n)."""
    claims, times = [], []
    for i in range(min(sample, n)):
        req = request(strategy)
        start = time.perf_counter()
        snap = ClusterSnapshot(workers=snapshot.workers, claims=list(claims))
        p = Placer(snap, req).place()
        times.append(time.perf_counter() - start)
        assert isinstance(p, Placement)
        claims.append(claim_of(p, req, i))
    med = statistics.median(times)
    return med, med * n


def batch(snapshot: ClusterSnapshot, n: int, strategy: str) -> tuple[float, list[Placement]]:
    start = time.perf_counter()
    out = Placer(snapshot, request(strategy, copy=False)).plan(n)
    return time.perf_counter() - start, out  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--today-sample", type=int, default=40)
    args = parser.parse_args()
    rows = []
    for workers, n, goal in ((250, 1000, 0.1), (5000, 10_000, 2.0)):
        snap = cluster(workers, 8, 80)
        for strategy in ("spread", "binpack"):
            lives, batches, placed, planned = [], [], None, None
            for _ in range(args.rounds):
                t, placed = live(snap, n, strategy)
                lives.append(t)
                t, planned = batch(snap, n, strategy)
                batches.append(t)
            assert [p.model_dump() for p in placed] == [p.model_dump() for p in planned], "live != batch"
            per_call, today_total = today_per_call(snap, n, max(1, args.today_sample * 250 // workers), strategy)
            t_live, t_batch = statistics.median(lives), statistics.median(batches)
            rows.append((f"{n:,} onto {workers:,} x 8, {strategy}", t_live, t_live / n * 1e6, per_call * 1e3,
                         today_total, t_batch, today_total / t_live, "yes" if t_live < goal else "NO", goal))
    head = ("case", "live total", "live/call", "today/call", "today total*", "batch", "today/live", "goal")
    print(f"{head[0]:<28} {head[1]:>11} {head[2]:>10} {head[3]:>11} {head[4]:>13} {head[5]:>9} {head[6]:>11}  {head[7]}")
    for case, tl, per, tc, tt, tb, ratio, ok, goal in rows:
        print(f"{case:<28} {tl * 1e3:>9.1f}ms {per:>8.1f}us {tc:>9.1f}ms {tt:>12.1f}s {tb * 1e3:>7.0f}ms "
              f"{ratio:>10,.0f}x  < {goal:g} s: {ok}")
    print("* today's total is extrapolated from the median of its first calls (the snapshot only grows).")


if __name__ == "__main__":
    main()
