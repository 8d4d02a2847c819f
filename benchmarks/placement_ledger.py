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
import json
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


def seed(sessions, model: Path, workers: int, deployments: dict[str, int]) -> dict[str, list[int]]:  # noqa: ANN001
    """``workers`` workers of 8 × 80 GiB GPUs, and the deployments' PENDING instances (ids by name)."""
    _, meta = read_local_metadata(str(model))
    ids = {}
    with sessions.begin() as s:
        for i in range(workers):
            repo.register_worker(s, WorkerRegistration(
                name=f"w{i:04d}", address="http://127.0.0.1:1", cpu_count=64, memory_total=512 * GiB,
                work_queue=f"node-w{i:04d}",
                gpus=[GpuInfo(index=j, name="H100-80G", memory_total=80 * GiB, virtual=True) for j in range(8)]))
        for name, replicas in deployments.items():
            spec = DeploymentSpec(name=name, replicas=replicas, source=ModelSource(local_path=str(model)))
            repo.create_deployment(s, spec, meta, ResourceEstimate.unknown("unused"))
            ids[name] = plan_apply.create_missing(s, name)
    return ids


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
    parser.add_argument("--serve", metavar="DIRECTORY", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(Path(args.serve), args.port, args.workers, args.replicas)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = make_engine(url)
        migrate(engine)
        sessions = session_factory(engine)
        model = write_tiny_llama_gguf(Path(tmp) / "models" / "tiny.gguf")
        seeded = seed(sessions, model, args.workers, {"bench": args.replicas, "batch": args.replicas})
        ids, batch_ids = seeded["bench"], seeded["batch"]
        times = []
        for iid in ids:
            start = time.perf_counter()
            with sessions.begin() as s:
                repo.place_instance(s, iid, TIMEOUT)
            times.append(time.perf_counter() - start)
        through = measure_through_server(args) if args.through_server else {}
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


def measure_through_server(args: argparse.Namespace) -> dict[str, ServerRun]:
    """This tree's server and the baseline's, one after the other, each on a database of its own
    seeded alike by its own code (a baseline's migrations may not know this tree's): first one
    client (request after request), then ``--clients`` client processes at once."""
    trees: dict[str, Path | None] = {"now": None}
    baseline = None if args.no_baseline else checkout(args.baseline)
    if baseline is not None:
        trees["base"] = baseline
    try:
        runs = {}
        for label, tree in trees.items():
            runs[f"{label}-1"], runs[f"{label}-n"] = through_server(tree, args)
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


def through_server(tree: Path | None, args: argparse.Namespace) -> tuple[ServerRun, ServerRun]:
    """Place through a server (this tree's, or ``tree``'s) one HTTP request per replica: its
    deployment ``one`` from one client, then ``many`` from ``--clients`` client processes. The
    server runs in its own process, as in production: a client in the same process would share
    its interpreter lock."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([sys.executable, __file__, "--serve", tmp, "--port", str(port),
                                   "--workers", str(args.workers), "--replicas", str(args.replicas)], env=env)
        try:
            info = wait_ready(port, server, Path(tmp) / "info.json")
            return (run_clients(port, server.pid, info["ids"]["one"], 1, info["key"]),
                    run_clients(port, server.pid, info["ids"]["many"], args.clients, info["key"]))
        finally:
            server.terminate()
            server.wait(10)


def run_clients(port: int, pid: int, ids: list[int], clients: int, key: str | None) -> ServerRun:
    cpu_before = _cpu_seconds(pid)
    start = time.perf_counter()
    shares = [ids[i::clients] for i in range(clients)]
    with ProcessPoolExecutor(clients) as pool:
        latencies = [t for part in pool.map(_client, [port] * clients, shares, [key] * clients) for t in part]
    return ServerRun(latencies, time.perf_counter() - start, _cpu_seconds(pid) - cpu_before)


def wait_ready(port: int, server: subprocess.Popen, info: Path) -> dict:
    deadline = time.monotonic() + 300  # seeding 1,000s of instances takes a while on a busy machine
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        while True:
            try:
                http.get("/v1/health")
                return json.loads(info.read_text())
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the benchmark's server did not start") from None
                time.sleep(0.1)


def _client(port: int, ids: list[int], key: str | None) -> list[float]:
    times = []
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers) as http:
        for iid in ids:
            start = time.perf_counter()
            answer = http.post(f"/v1/internal/instances/{iid}/place")
            times.append(time.perf_counter() - start)
            answer.raise_for_status()
            if answer.json()["state"] != "SCHEDULED":
                raise RuntimeError(f"instance {iid} was not placed: {answer.json()['state_message']}")
    return times


def serve(tmp: Path, port: int, workers: int, replicas: int) -> None:
    """The server process of --through-server, on a database of its own that it seeds with its
    own code; writes the instance ids (and an admin key where the tree has authentication) to
    ``tmp/info.json`` before it serves. No flows are triggered, no controller runs, and no
    heartbeats come, so readiness must not time out during the run."""
    import uvicorn

    from gpufleet.server.app import create_app

    url = f"sqlite:///{tmp / 'bench.db'}"
    engine = make_engine(url)
    migrate(engine)
    ids = seed(session_factory(engine), write_tiny_llama_gguf(tmp / "tiny.gguf"), workers,
               {"one": replicas, "many": replicas})
    engine.dispose()
    app = create_app(url, trigger=lambda op, params: "", run_controller=False)
    app.state.gpufleet.worker_timeout = TIMEOUT
    key = None
    try:
        from gpufleet.store import keys
    except ImportError:  # a baseline before authentication
        pass
    else:
        with app.state.gpufleet.session() as s:
            key = keys.create_key(s, "bench", "admin").token
    (tmp / "info.json").write_text(json.dumps({"ids": ids, "key": key}))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
