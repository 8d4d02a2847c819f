"""A node's heartbeats carry what other programs hold on its GPUs, so placement follows the GPU's
real free memory: here a declared GPU whose outside usage the test changes in its JSON file."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.e2e.conftest import E2ECluster, wait_until

GiB = 1 << 30


def outside(cluster: E2ECluster, node: str) -> float:
    [worker] = [w for w in cluster.cli_json("workers") if w["name"] == node]
    return worker["gpus"][0]["memory_used_outside"] / GiB


def test_outside_usage_follows_the_gpu_and_placement_with_it(cluster: E2ECluster, tiny_gguf: Path,
                                                             tmp_path: Path) -> None:
    spec = tmp_path / "gpus.json"
    spec.write_text(json.dumps([{"name": "L4", "memory_gib": 2, "count": 1, "used_outside_gib": 0}]))
    node = cluster.start_node("live", virtual_gpus=str(spec), labels={"pool": "live"})
    try:
        assert outside(cluster, "live") == 0
        spec.write_text(json.dumps([{"name": "L4", "memory_gib": 2, "count": 1, "used_outside_gib": 1.9}]))
        wait_until(lambda: abs(outside(cluster, "live") - 1.9) < 0.01, timeout=15, what="heartbeat with the new usage")
        # 0.1 GiB left is less than the tiny model's ≈0.7 GiB per GPU: nothing fits the node now
        plan = cluster.cli("plan", "--local-path", str(tiny_gguf), "--worker-selector", "pool=live", "--json",
                           check=False)
        assert plan.returncode == 3  # `plan` says "does not fit" with its exit code
        [replica] = json.loads(plan.stdout)["replicas"]
        assert replica["placement"] is None
        assert "largest free 0.10 GiB" in replica["reasons"]["live"], replica
        spec.write_text(json.dumps([{"name": "L4", "memory_gib": 2, "count": 1, "used_outside_gib": 0}]))
        wait_until(lambda: outside(cluster, "live") == 0, timeout=15, what="the usage gone")
        plan = cluster.cli("plan", "--local-path", str(tiny_gguf), "--worker-selector", "pool=live", "--json")
        assert json.loads(plan.stdout)["replicas"][0]["placement"]["worker"] == "live"
    finally:
        node.proc.send_signal(signal.SIGTERM)
        node.proc.wait(30)
        cluster.children.remove(node)
