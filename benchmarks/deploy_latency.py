"""Deploy latency on the embedded cluster (`gpufleet up`'s default), beside a baseline commit
measured in the same run: deploy 1 replica → RUNNING, scale 0 → N → all RUNNING, 0 → LARGE
on declared virtual GPUs spread over several nodes, and stop of LARGE → all gone; with the
requests the operations cost the gpufleet server (from its ``/metrics``).

    .venv/bin/python benchmarks/deploy_latency.py [--rounds 5] [--replicas 10] [--large 100] [--nodes 10]
                                                  [--baseline 5c8e108 | --no-baseline]

The baseline is checked out into a temporary git worktree and measured by this same script
with that tree first on PYTHONPATH (its cluster's processes run its code). Goals (issue
"Reconcile as one pure plan"): deploy < 2 s median, of which orchestration < 1.5 s; 0 → 10
< 4 s; 0 → 100 on virtual GPUs < 30 s; stop of 100 < 10 s; server requests per operation
O(1) in replicas.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
#: gpufleet's main before the reconcile plan (issue "Reconcile as one pure plan")
DEFAULT_BASELINE = "5c8e108"
#: requests that are not the operation's own cost: the benchmark's polling, node heartbeats, scrapes
NOT_COUNTED = re.compile(r"heartbeat|/metrics|^GET /v1/deployments|^GET /v1/health|^GET /v1/workers$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_start_seconds(model: Path) -> float:
    """Spawn → /health 200, exactly what the node's launch + health check wait for."""
    from gpufleet.runtimes.llama_server import llama_server_executable

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


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 300) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if predicate():
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise TimeoutError(what)


def ready(api: str, name: str, replicas: int) -> bool:
    r = httpx.get(f"{api}/v1/deployments/{name}", timeout=10)
    r.raise_for_status()
    return r.json()["ready_replicas"] == replicas


def no_instances(api: str, name: str) -> bool:
    """Deleted, or STOPPED: no replicas wanted and no instance left (not even one being removed)."""
    r = httpx.get(f"{api}/v1/deployments/{name}", timeout=10)
    return r.status_code == 404 or r.json()["state"] == "STOPPED"


def server_requests(api: str) -> dict[str, float] | None:
    """Requests served so far by route (None where the server has no /metrics)."""
    r = httpx.get(f"{api}/metrics", timeout=10)
    if r.status_code != 200:
        return None
    counts: dict[str, float] = {}
    for m in re.finditer(r'gpufleet_http_requests_total\{method="(\w+)",route="([^"]+)",status="\d+"\} ([\d.e+]+)', r.text):
        key = f"{m[1]} {m[2]}"
        counts[key] = counts.get(key, 0) + float(m[3])
    return counts


class Calls:
    """Server requests made between ``start()`` and ``stop()``, the benchmark's own excluded."""

    def __init__(self, api: str) -> None:
        self.api, self.before = api, None

    def start(self) -> None:
        self.before = server_requests(self.api)

    def stop(self) -> int | None:
        after = server_requests(self.api)
        if after is None or self.before is None:
            return None
        if os.environ.get("BENCH_DEBUG"):
            print({k: v - self.before.get(k, 0) for k, v in after.items() if v != self.before.get(k, 0)}, file=sys.stderr)
        return int(sum(v - self.before.get(k, 0) for k, v in after.items() if not NOT_COUNTED.search(k)))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Everything, against the gpufleet importable here; returns the figures."""
    from gpufleet.cli.embedded import _spawn, _wait_for_worker, start_cluster
    from gpufleet.demo.tiny_model import write_tiny_llama_gguf

    # the latency of orchestration, without authentication (benchmarks/auth_overhead.py measures that);
    # the baselines this runs against may predate keys
    os.environ["GPUFLEET_AUTH"] = "off"
    home = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    model = write_tiny_llama_gguf(home / "tiny.gguf")
    backend = [backend_start_seconds(model) for _ in range(5)]
    t = time.perf_counter()
    cluster = start_cluster(free_port(), free_port(), "bench", "A100-80G:1", home, log=lambda *_: None)
    up_s = time.perf_counter() - t
    api = cluster.api_url
    calls = Calls(api)
    out: dict[str, Any] = {"backend": backend, "cluster_up": up_s, "one": [], "many": [], "calls": {}}
    spec = lambda name, n: {"name": name, "replicas": n, "source": {"kind": "local_path", "local_path": str(model)}}  # noqa: E731
    try:
        for r in range(args.rounds):
            name = f"bench-{r}"
            calls.start()
            t0 = time.perf_counter()
            httpx.post(f"{api}/v1/deployments", json=spec(name, 1), timeout=60).raise_for_status()
            out["one"].append(time.perf_counter() - t0 + wait_for(lambda: ready(api, name, 1), name))
            out["calls"].setdefault("deploy 1", calls.stop())
            httpx.post(f"{api}/v1/deployments/{name}/scale", json={"replicas": 0}, timeout=60).raise_for_status()
            wait_for(lambda: no_instances(api, name), f"{name} stopped")
            calls.start()
            t0 = time.perf_counter()
            httpx.post(f"{api}/v1/deployments/{name}/scale", json={"replicas": args.replicas}, timeout=60)
            out["many"].append(time.perf_counter() - t0 + wait_for(lambda: ready(api, name, args.replicas), name))
            out["calls"].setdefault(f"scale 0 -> {args.replicas}", calls.stop())
            httpx.delete(f"{api}/v1/deployments/{name}", timeout=60).raise_for_status()
            wait_for(lambda: no_instances(api, name), f"{name} deleted")
        if args.large:
            nodes = {f"n{i}": _spawn(f"node-n{i}", [sys.executable, "-m", "gpufleet.cli.main", "node", "--name",
                                                    f"n{i}", "--server", api, "--stop-backends-on-exit",
                                                    "--virtual-gpus", "A100-80G:1"], cluster.env, home / "logs")
                     for i in range(1, args.nodes)}  # the cluster's own node is the first
            cluster.children.extend(nodes.values())
            for name, child in nodes.items():
                _wait_for_worker(api, name, child, 120)
            httpx.post(f"{api}/v1/deployments", json=spec("large", 0), timeout=60).raise_for_status()
            time.sleep(3)  # let its (empty) deploy run finish, so it is not counted with the scale-out
            calls.start()
            t0 = time.perf_counter()
            httpx.post(f"{api}/v1/deployments/large/scale", json={"replicas": args.large}, timeout=60)
            out["large_up"] = time.perf_counter() - t0 + wait_for(lambda: ready(api, "large", args.large), "large", 600)
            out["calls"][f"scale 0 -> {args.large}"] = calls.stop()
            calls.start()
            t0 = time.perf_counter()
            httpx.post(f"{api}/v1/deployments/large/scale", json={"replicas": 0}, timeout=60)
            out["large_stop"] = time.perf_counter() - t0 + wait_for(lambda: no_instances(api, "large"), "stop", 600)
            out["calls"][f"stop {args.large}"] = calls.stop()
    finally:
        cluster.stop()
        discard_prefect_data(home)
    return out


def discard_prefect_data(home: Path) -> None:
    """This run's Prefect database, where it is kept outside the home (absent in older trees)."""
    try:
        from gpufleet.cli import prefect_postgres
    except ImportError:
        return
    prefect_postgres.discard(home)


def run_baseline(ref: str, args: argparse.Namespace) -> dict[str, Any]:
    tree = Path(tempfile.mkdtemp(prefix="gpufleet-baseline-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tree), ref],
                   check=True, capture_output=True)
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure-only", "--rounds", str(args.rounds),
               "--replicas", str(args.replicas), "--large", str(args.large), "--nodes", str(args.nodes)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=3000)
        if done.returncode != 0:
            raise RuntimeError(f"baseline run failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


def report(now: dict[str, Any], base: dict[str, Any] | None, args: argparse.Namespace, ref: str) -> None:
    backend = statistics.median(now["backend"])
    rows = [
        ("deploy 1 replica -> RUNNING (median)", statistics.median(now["one"]),
         base and statistics.median(base["one"]), "< 2 s"),
        ("  of which orchestration", statistics.median(now["one"]) - backend,
         base and statistics.median(base["one"]) - statistics.median(base["backend"]), "< 1.5 s"),
        (f"scale 0 -> {args.replicas} -> all RUNNING (median)", statistics.median(now["many"]),
         base and statistics.median(base["many"]), "< 4 s"),
    ]
    if args.large:
        rows += [(f"scale 0 -> {args.large} on {args.nodes} nodes", now["large_up"], base and base["large_up"], "< 30 s"),
                 (f"stop {args.large} -> all gone", now["large_stop"], base and base["large_stop"], "< 10 s")]
    print(f"\n{'measure':<44}{'now':>9}{'baseline':>10}{'ratio':>8}   goal     (rounds: {args.rounds}; baseline {ref})")
    for label, value, old, goal in rows:
        ratio = f"{old / value:7.1f}x" if old else "      -"
        print(f"{label:<44}{value:>8.2f}s{(f'{old:.2f}s' if old else '-'):>10}{ratio}   {goal}")
    print(f"\nserver requests per operation (from /metrics; polling and heartbeats excluded): "
          f"{json.dumps(now['calls'])}")
    print(f"backend start alone (spawn -> /health 200), median of 5: {backend:.2f} s; "
          f"cluster up in {now['cluster_up']:.1f} s" + (f" (baseline {base['cluster_up']:.1f} s)" if base else ""))
    print("per round, now:      deploy " + ", ".join(f"{x:.2f}" for x in now["one"])
          + " | scale " + ", ".join(f"{x:.2f}" for x in now["many"]))
    if base:
        print("per round, baseline: deploy " + ", ".join(f"{x:.2f}" for x in base["one"])
              + " | scale " + ", ".join(f"{x:.2f}" for x in base["many"]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--large", type=int, default=100, help="replicas of the large scale-out (0: skip)")
    ap.add_argument("--nodes", type=int, default=10, help="nodes for the large scale-out, one virtual GPU each")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref measured beside this tree")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    # `timeout` and Ctrl-C must still stop the clusters this script started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.measure_only:
        print(json.dumps(measure(args)))
        return 0
    base = None
    if not args.no_baseline:
        print(f"measuring the baseline {args.baseline} …", flush=True)
        base = run_baseline(args.baseline, args)
    print("measuring this tree …", flush=True)
    report(measure(args), base, args, args.baseline)
    return 0


if __name__ == "__main__":
    # the process path is what this measures (a node picks docker wherever a Docker engine answers)
    os.environ.setdefault("GPUFLEET_RUNTIME", "process")
    sys.exit(main())
