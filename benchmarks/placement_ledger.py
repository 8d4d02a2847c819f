"""Placement through the database, as the server does it: one transaction per
instance that locks the ledger, reads the snapshot, places and records the claim.

    .venv/bin/python benchmarks/placement_ledger.py [--workers 250] [--replicas 1000] [--database-url URL]

Prints the latency of one placement as the ledger grows (first, median, last) and
the total, then the same number of replicas of a second deployment placed in one
call (`place_instances`, what `POST /v1/internal/place` runs); SQLite in a
temporary directory unless --database-url is given.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from gpufleet.core.schemas import DeploymentSpec, GpuInfo, ModelSource, ResourceEstimate, WorkerRegistration
from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from gpufleet.sources import read_local_metadata
from gpufleet.store import plan_apply, repository as repo
from gpufleet.store.db import make_engine, migrate, session_factory

GiB = 1 << 30
TIMEOUT = timedelta(days=1)  # no heartbeats here: registered workers stay ready for the whole run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=250)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        migrate(engine)
        sessions = session_factory(engine)
        model = write_tiny_llama_gguf(Path(tmp) / "models" / "tiny.gguf")
        _, meta = read_local_metadata(str(model))
        with sessions.begin() as s:
            for i in range(args.workers):
                repo.register_worker(s, WorkerRegistration(
                    name=f"w{i:04d}", address="http://127.0.0.1:1", cpu_count=64, memory_total=512 * GiB,
                    work_queue=f"node-w{i:04d}",
                    gpus=[GpuInfo(index=j, name="H100-80G", memory_total=80 * GiB, virtual=True) for j in range(8)]))
            spec = DeploymentSpec(name="bench", replicas=args.replicas, source=ModelSource(local_path=str(model)))
            repo.create_deployment(s, spec, meta, ResourceEstimate.unknown("unused"))
            ids = plan_apply.create_missing(s, "bench")
            repo.create_deployment(s, spec.model_copy(update={"name": "batch"}), meta, ResourceEstimate.unknown("-"))
            batch_ids = plan_apply.create_missing(s, "batch")
        times = []
        for iid in ids:
            start = time.perf_counter()
            with sessions.begin() as s:
                repo.place_instance(s, iid, TIMEOUT)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with sessions.begin() as s:
            rows = repo.place_instances(s, batch_ids, TIMEOUT)
        batch = time.perf_counter() - start
        unplaced = [r.state_message for r in rows if r.placement is None]
        assert not unplaced, unplaced[:2]
        engine.dispose()
    ms = [t * 1000 for t in times]
    print(f"{args.replicas} placements, {args.workers} workers x 8 GPUs, {url.split(':')[0]}")
    print(f"  first {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, last {ms[-1]:.1f} ms, "
          f"total {sum(times):.2f} s ({len(times) / sum(times):,.0f}/s)")
    print(f"  {len(batch_ids)} more in one place_instances call (on top of those): {batch:.2f} s "
          f"({len(batch_ids) / batch:,.0f}/s)")


if __name__ == "__main__":
    main()
