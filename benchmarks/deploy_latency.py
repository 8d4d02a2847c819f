"""Deploy latency on the embedded cluster: time from `deploy` to RUNNING, split
into orchestration (Prefect + gpufleet) and backend start, for 1 replica and for
scaling 0 → N.

    .venv/bin/python benchmarks/deploy_latency.py [--replicas 10] [--rounds 3]

Backend start is measured on its own (spawn the same llama.cpp launcher and
poll /health, as the node does); orchestration is the rest of deploy→RUNNING.
Prints a table; goals: orchestration < 3 s for one replica, 0→10 in < 10 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from gpufleet.cli.embedded import start_cluster
from gpufleet.client import ApiError, GpufleetClient
from gpufleet.core.schemas import DeploymentSpec, ModelSource
from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from gpufleet.runtimes.llama_server import llama_server_executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_start_seconds(model: Path) -> float:
    """Spawn → /health 200, exactly what the node's launch + health check wait for."""
    port = free_port()
    cmd = llama_server_executable() + ["--model", str(model), "--host", "127.0.0.1", "--port", str(port),
                                       "--ctx-size", "512", "--n-gpu-layers", "0"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait()


def wait_running(c: GpufleetClient, name: str, replicas: int, timeout: float = 300) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        insts = [i for i in c.list_instances(deployment=name) if not i.deleting]
        if len(insts) == replicas and all(i.state == "RUNNING" for i in insts):
            return time.perf_counter() - t0
        if any(i.state == "ERROR" for i in insts):
            raise RuntimeError(f"instance failed: {[i.state_message for i in insts if i.state == 'ERROR']}")
        time.sleep(0.05)
    raise TimeoutError(name)


def wait_gone(c: GpufleetClient, name: str) -> None:
    """Until the deployment has no instances (or no longer exists)."""
    while True:
        try:
            if not c.list_instances(deployment=name):
                return
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefect-postgres", action="store_true",
                    help="run the Prefect server on a throw-away PostgreSQL instead of SQLite")
    args = ap.parse_args()
    # `timeout` and Ctrl-C must still stop the cluster this script started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.prefect_postgres:
        from tests.support.postgres import temporary_postgres

        with temporary_postgres() as url:
            os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = url.replace("+psycopg2", "+asyncpg")
            run(args, "PostgreSQL")
    else:
        run(args, "a fresh SQLite database")


def run(args: argparse.Namespace, prefect_db: str) -> None:

    home = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    model = write_tiny_llama_gguf(home / "tiny.gguf")
    backend = [backend_start_seconds(model) for _ in range(5)]
    backend_s = statistics.median(backend)

    print("starting embedded cluster…", flush=True)
    t = time.perf_counter()
    cluster = start_cluster(free_port(), free_port(), "bench", None, home, log=lambda *_: None)
    print(f"cluster up in {time.perf_counter() - t:.1f} s (Prefect server on {prefect_db})")
    one: list[float] = []
    many: list[float] = []
    try:
        with GpufleetClient(cluster.api_url) as c:
            for r in range(args.rounds):
                name = f"bench-{r}"
                t0 = time.perf_counter()
                c.create_deployment(DeploymentSpec(name=name, replicas=1,
                                                   source=ModelSource(local_path=str(model))))
                one.append(time.perf_counter() - t0 + wait_running(c, name, 1))
                c.scale(name, 0)
                wait_gone(c, name)
                t0 = time.perf_counter()
                c.scale(name, args.replicas)
                many.append(time.perf_counter() - t0 + wait_running(c, name, args.replicas))
                c.delete_deployment(name)
                wait_gone(c, name)
    finally:
        cluster.stop()

    def row(label: str, values: list[float], backend_part: float, goal: str) -> None:
        med = statistics.median(values)
        print(f"{label:<34}{med:>8.2f} s{min(values):>8.2f} s{max(values):>8.2f} s"
              f"{backend_part:>10.2f} s{med - backend_part:>12.2f} s   {goal}")

    print()
    print(f"{'measure (median of %d rounds)' % args.rounds:<34}{'median':>10}{'min':>10}{'max':>10}"
          f"{'backend':>12}{'orchestration':>14}   goal")
    row("deploy 1 replica -> RUNNING", one, backend_s, "orchestration < 3 s")
    # replicas start concurrently, so the backend part of a scale-out is one start, not N
    row(f"scale 0 -> {args.replicas} -> all RUNNING", many, backend_s, "total < 10 s")
    print(f"\nbackend start alone (spawn -> /health 200), median of 5: {backend_s:.2f} s "
          f"({', '.join(f'{b:.2f}' for b in backend)})")


if __name__ == "__main__":
    # the process path is what this measures (a node picks docker wherever a Docker engine answers)
    os.environ.setdefault("GPUFLEET_RUNTIME", "process")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support
    sys.exit(main())
