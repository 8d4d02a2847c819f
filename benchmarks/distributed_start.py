"""What spreading one instance over two workers (llama.cpp RPC) costs, against the
same model on one worker: deploy → RUNNING, and per-token latency of a chat.

    .venv/bin/python benchmarks/distributed_start.py [--rounds 3] [--tokens 64]

Both run the same RPC-enabled `llama-server` (scripts/build-llama-cpp.sh builds it),
so the difference is the RPC servers' start (one more node run, awaited before the
main process) and every token's round trips to the RPC devices. Two node agents
with one virtual GPU each; the tiny demo model, so the figures are orchestration
and protocol overhead, not compute. Prints medians and the ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from gpufleet.cli.embedded import _spawn, _wait_for_worker, start_cluster, stop_children
from gpufleet.client import GpufleetClient
from gpufleet.core.schemas import DeploymentSpec, ModelSource
from gpufleet.demo.tiny_model import write_tiny_llama_gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support
from benchmarks.deploy_latency import free_port, wait_gone  # noqa: E402
from tests.support.llama_rpc import ensure_rpc_binaries  # noqa: E402


def wait_running(c: GpufleetClient, name: str, timeout: float = 300) -> int:
    """Until the deployment's one instance is RUNNING; returns its port."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        insts = [i for i in c.list_instances(deployment=name) if not i.deleting]
        if insts and insts[0].state == "RUNNING" and insts[0].port:
            return insts[0].port
        if any(i.state == "ERROR" for i in insts):
            raise RuntimeError(f"instance failed: {[i.state_message for i in insts]}")
        time.sleep(0.05)
    raise TimeoutError(name)


def ms_per_token(port: int, tokens: int) -> float:
    """llama-server's own eval timing of one chat (generation only, prompt excluded)."""
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True}
    resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
    resp.raise_for_status()
    return float(resp.json()["timings"]["predicted_per_token_ms"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` must still stop the cluster
    llama_server, rpc_server = ensure_rpc_binaries()
    home = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    model = write_tiny_llama_gguf(home / "tiny.gguf")
    cluster = start_cluster(free_port(), free_port(), "bench", None, home, log=lambda *_: None)
    env = {**cluster.env, "GPUFLEET_LLAMA_SERVER": llama_server[0],
           "GPUFLEET_RPC_LLAMA_SERVER": llama_server[0], "GPUFLEET_RPC_SERVER": rpc_server[0]}
    nodes = []
    for name in ("ra", "rb"):
        child = _spawn(f"node-{name}", [sys.executable, "-m", "gpufleet.cli.main", "node", "--name", name,
                                        "--server", cluster.api_url, "--stop-backends-on-exit",
                                        "--virtual-gpus", "T4-0.6G:1", "--label", "pool=rpc"],
                       env, home / "logs")
        _wait_for_worker(cluster.api_url, name, child, 60, cluster.api_key)
        nodes.append(child)
    placements = {
        "one worker": {"worker_selector": ["pool=rpc"]},
        "two workers (RPC)": {"worker_selector": ["pool=rpc"], "distributed": True, "gpus_per_replica": 2},
    }
    start: dict[str, list[float]] = {k: [] for k in placements}
    token: dict[str, list[float]] = {k: [] for k in placements}
    try:
        with GpufleetClient(cluster.api_url, api_key=cluster.api_key) as c:
            for r in range(args.rounds):
                for i, (label, placement) in enumerate(placements.items()):
                    name = f"bench-{r}-{i}"
                    t0 = time.perf_counter()
                    c.create_deployment(DeploymentSpec(name=name, replicas=1, placement=placement,
                                                       source=ModelSource(local_path=str(model))))
                    port = wait_running(c, name)
                    start[label].append(time.perf_counter() - t0)
                    ms_per_token(port, 8)  # warm-up
                    token[label].append(statistics.median(ms_per_token(port, args.tokens) for _ in range(3)))
                    c.delete_deployment(name)
                    wait_gone(c, name)
    finally:
        stop_children(nodes)
        cluster.stop()

    base, dist = "one worker", "two workers (RPC)"
    print(f"\n{'tiny model, median of %d rounds' % args.rounds:<34}{'deploy -> RUNNING':>20}{'ms per token':>16}")
    for label in placements:
        print(f"{label:<34}{statistics.median(start[label]):>18.2f} s{statistics.median(token[label]):>16.2f}")
    print(f"{'ratio (two workers / one)':<34}"
          f"{statistics.median(start[dist]) / statistics.median(start[base]):>19.2f}x"
          f"{statistics.median(token[dist]) / statistics.median(token[base]):>15.2f}x")
    print("\nall rounds, deploy -> RUNNING (s):",
          {k: [round(v, 2) for v in vs] for k, vs in start.items()})


if __name__ == "__main__":
    # the process path is what this measures (a node picks docker wherever a Docker engine answers)
    os.environ.setdefault("GPUFLEET_RUNTIME", "process")
    main()
