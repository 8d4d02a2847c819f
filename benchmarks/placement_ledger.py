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
import os
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
    parser.add_argument("--through-server", action="store_true",
                        help="also place the same number through the server's HTTP route, one request each")
    parser.add_argument("--serve", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.port)
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
            served_ids = []
            if args.through_server:
                repo.create_deployment(s, spec.model_copy(update={"name": "served"}), meta, ResourceEstimate.unknown("-"))
                served_ids = plan_apply.create_missing(s, "served")
        times = []
        for iid in ids:
            start = time.perf_counter()
            with sessions.begin() as s:
                repo.place_instance(s, iid, TIMEOUT)
            times.append(time.perf_counter() - start)
        served = through_server(url, served_ids) if served_ids else []
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
    if served:
        sms = [x * 1000 for x in served]
        print(f"  {len(served)} more through the server, one HTTP request each "
              f"(POST /v1/internal/instances/ID/place, uvicorn on 127.0.0.1): median {statistics.median(sms):.1f} ms, "
              f"total {sum(served):.2f} s ({len(served) / sum(served):,.0f}/s); server CPU "
              f"{server_cpu[-1] / len(served) * 1000:.2f} ms per placement "
              f"(≤ {len(served) / server_cpu[-1]:,.0f}/s on one free core)")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): the server's own cost per request,
    which a busy machine does not inflate the way it inflates wall-clock time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: CPU seconds the server process spent on the requests of the last through_server call
server_cpu: list[float] = []


def through_server(url: str, ids: list[int]) -> list[float]:
    """The same placements through the gpufleet server's HTTP route, one request each. The
    server runs in its own process, as it does in production: a client in the same process
    would share its interpreter lock and make the server look slower than it is."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", url, "--port", str(port)])
    times = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    http.get("/v1/health")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the benchmark's server did not start") from None
                    time.sleep(0.05)
            cpu_before = _cpu_seconds(server.pid)
            for iid in ids:
                start = time.perf_counter()
                http.post(f"/v1/internal/instances/{iid}/place").raise_for_status()
                times.append(time.perf_counter() - start)
            server_cpu.append(_cpu_seconds(server.pid) - cpu_before)
    finally:
        server.terminate()
        server.wait(10)
    return times


def serve(url: str, port: int) -> None:
    """The server process of --through-server: no flows are triggered, no controller runs."""
    import uvicorn

    from gpufleet.server.app import create_app

    app = create_app(url, trigger=lambda op, params: "", run_controller=False)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
