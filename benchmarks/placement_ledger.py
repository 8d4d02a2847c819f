"""Placement through the database, as the server does it: one transaction per
instance that locks the ledger, reads the snapshot, places and records the claim.

    .venv/bin/python benchmarks/placement_ledger.py [--workers 250] [--replicas 1000] [--database-url URL]
        [--through-server [--clients 4] [--baseline REF | --no-baseline]]

Prints the latency of one placement as the ledger grows (first, median, last) and
the total, then the same number of replicas of a second deployment placed in one
call (`place_instances`, what `POST /v1/internal/place` runs); SQLite in a
temporary directory unless --database-url is given.

With --through-server, the same number again through the gpufleet server's HTTP route, one
replica per request, by this tree's server and then by the baseline commit's (checked out into a
temporary git worktree), on the same database: first from one client, request after request,
then from --clients client processes at once. Besides placements per second it prints the
server process's CPU time per placement, the figure a busy machine disturbs least.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from gpufleet.core.schemas import DeploymentSpec, GpuInfo, ModelSource, ResourceEstimate, WorkerRegistration
from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from gpufleet.sources import read_local_metadata
from gpufleet.store import plan_apply, repository as repo
from gpufleet.store.db import make_engine, migrate, session_factory

GiB = 1 << 30
REPO = Path(__file__).resolve().parents[1]
#: main before the through-server work of issue 12 (this session's first commit)
DEFAULT_BASELINE = "873eed3"
TIMEOUT = timedelta(days=1)  # no heartbeats here: registered workers stay ready for the whole run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=250)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--database-url")
    parser.add_argument("--through-server", action="store_true",
                        help="also place the same number through the server's HTTP route, one request each")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help="git ref whose server is measured beside this tree's with --through-server")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--clients", type=int, default=4,
                        help="concurrent client processes in the second through-server measurement")
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
            served: dict[str, list[int]] = {}
            if args.through_server:
                for name in ("now-1", "now-n", "base-1", "base-n"):
                    repo.create_deployment(s, spec.model_copy(update={"name": name}), meta,
                                           ResourceEstimate.unknown("-"))
                    served[name] = plan_apply.create_missing(s, name)
        times = []
        for iid in ids:
            start = time.perf_counter()
            with sessions.begin() as s:
                repo.place_instance(s, iid, TIMEOUT)
            times.append(time.perf_counter() - start)
        through = measure_through_server(url, served, args) if served else {}
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
    if through:
        report_through_server(through, args)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): the server's own cost per request,
    which a busy machine does not inflate the way it inflates wall-clock time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerRun:
    """One through-server measurement: wall seconds per request, and the server's CPU seconds."""

    latencies: list[float]
    wall: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall


def measure_through_server(url: str, served: dict[str, list[int]], args: argparse.Namespace) -> dict[str, ServerRun]:
    """This tree's server and the baseline's, one after the other on the same database, each
    first with one client (request after request) and then with ``--clients`` client processes."""
    trees: dict[str, Path | None] = {"now": None}
    baseline = None if args.no_baseline else checkout(args.baseline)
    if baseline is not None:
        trees["base"] = baseline
    try:
        runs = {}
        for label, tree in trees.items():
            runs[f"{label}-1"] = through_server(url, served[f"{label}-1"], tree, clients=1)
            runs[f"{label}-n"] = through_server(url, served[f"{label}-n"], tree, clients=args.clients)
        return runs
    finally:
        if baseline is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)],
                           capture_output=True)


def checkout(ref: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="gpufleet-baseline-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tree), ref],
                   check=True, capture_output=True)
    return tree


def report_through_server(runs: dict[str, ServerRun], args: argparse.Namespace) -> None:
    print("through the server (POST /v1/internal/instances/ID/place, one replica per request, uvicorn on "
          f"127.0.0.1, server in its own process); baseline {args.baseline}")
    print(f"  {'':<22}{'placements/s':>14}{'median ms':>11}{'server CPU ms':>15}")
    for key, title in (("1", "1 client"), ("n", f"{args.clients} clients")):
        for label in ("now", "base"):
            run = runs.get(f"{label}-{key}")
            if run is None:
                continue
            print(f"  {label + ', ' + title:<22}{run.rate:>14,.0f}{statistics.median(run.latencies) * 1000:>11.2f}"
                  f"{run.server_cpu / len(run.latencies) * 1000:>15.2f}")
        if f"base-{key}" in runs:
            now, base = runs[f"now-{key}"], runs[f"base-{key}"]
            print(f"  {'ratio now/base, ' + title:<22}{now.rate / base.rate:>14.2f}x"
                  f"{'':>11}{(now.server_cpu / len(now.latencies)) / (base.server_cpu / len(base.latencies)):>15.2f}x")
    print("  goal: ≥ 500 placements/s (issue 12)")


def through_server(url: str, ids: list[int], tree: Path | None, clients: int) -> ServerRun:
    """Place ``ids`` through a server (this tree's, or ``tree``'s) one HTTP request each, from
    ``clients`` client processes at once. The server runs in its own process, as in production:
    a client in the same process would share its interpreter lock."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    server = subprocess.Popen([sys.executable, __file__, "--serve", url, "--port", str(port)], env=env)
    try:
        wait_ready(port, server)
        cpu_before = _cpu_seconds(server.pid)
        start = time.perf_counter()
        shares = [ids[i::clients] for i in range(clients)]
        with ProcessPoolExecutor(clients) as pool:
            latencies = [t for part in pool.map(_client, [port] * clients, shares) for t in part]
        wall = time.perf_counter() - start
        return ServerRun(latencies, wall, _cpu_seconds(server.pid) - cpu_before)
    finally:
        server.terminate()
        server.wait(10)


def wait_ready(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        while True:
            try:
                http.get("/v1/health")
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the benchmark's server did not start") from None
                time.sleep(0.05)


def _client(port: int, ids: list[int]) -> list[float]:
    times = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for iid in ids:
            start = time.perf_counter()
            answer = http.post(f"/v1/internal/instances/{iid}/place")
            times.append(time.perf_counter() - start)
            answer.raise_for_status()
            if answer.json()["state"] != "SCHEDULED":
                raise RuntimeError(f"instance {iid} was not placed: {answer.json()['state_message']}")
    return times


def serve(url: str, port: int) -> None:
    """The server process of --through-server: no flows are triggered, no controller runs.
    Heartbeats are not sent here, so readiness must not time out during the run."""
    import uvicorn

    from gpufleet.server.app import create_app

    app = create_app(url, trigger=lambda op, params: "", run_controller=False)
    app.state.gpufleet.worker_timeout = TIMEOUT
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
