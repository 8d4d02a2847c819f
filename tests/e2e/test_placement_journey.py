"""Placement end to end: two more node agents with virtual GPUs and labels join the
session cluster (real Prefect, gpufleet server, llama.cpp processes); spread, binpack,
worker selectors, a manual GPU selection partitioned across replicas, and a PENDING
instance placed as soon as a matching worker joins."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpufleet.cli.embedded import Child, _spawn, _wait_for_worker, stop_children
from tests.e2e.conftest import E2ECluster, wait_until


def start_labelled_node(cluster: E2ECluster, name: str, gpus: str, labels: dict[str, str]) -> Child:
    args = [sys.executable, "-m", "gpufleet.cli.main", "node", "--name", name, "--server", cluster.api_url,
            "--stop-backends-on-exit", "--virtual-gpus", gpus]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    child = _spawn(f"node-{name}", args, cluster.env, cluster.home / "logs")
    _wait_for_worker(cluster.api_url, name, child, 60, cluster.api_key)
    return child


@pytest.fixture(scope="module")
def pool(cluster: E2ECluster) -> Iterator[list[Child]]:
    """pa (zone a) and pb (zone b), 2 × A100-80G each, both in pool p."""
    children = [start_labelled_node(cluster, "pa", "A100-80G:2", {"pool": "p", "zone": "a"}),
                start_labelled_node(cluster, "pb", "A100-80G:2", {"pool": "p", "zone": "b"})]
    try:
        yield children
    finally:
        stop_children(children)
        # gone for good: the journeys after this one must not be placed on them before they time out
        for name in ("pa", "pb"):
            cluster.cli("workers", "rm", name, "--force", check=False)


def placed(cluster: E2ECluster, name: str) -> list[dict]:
    return [i for i in cluster.instances(name) if not i["deleting"]]


def deploy(cluster: E2ECluster, tiny: Path, name: str, *flags: str) -> list[dict]:
    cluster.cli("deploy", "--name", name, "--local-path", str(tiny), *flags)
    return placed(cluster, name)


def test_spread_binpack_selectors_and_manual_gpus(cluster: E2ECluster, pool: list[Child], tiny_gguf: Path) -> None:
    # spread: two replicas, two workers
    spread = deploy(cluster, tiny_gguf, "spread", "--replicas", "2", "--worker-selector", "pool=p")
    assert sorted(i["worker"] for i in spread) == ["pa", "pb"]
    assert all(i["state"] == "RUNNING" for i in spread)
    assert all(i["placement"]["score_breakdown"]["resources"] > 0 for i in spread)

    # the live cluster as a snapshot, and a dry run against it: nothing recorded
    snap = json.loads(cluster.cli("cluster", "snapshot").stdout)
    assert {"pa", "pb"} <= {w["name"] for w in snap["workers"]}
    assert {i["id"] for i in spread} <= {c["instance"] for c in snap["claims"]}
    dry = json.loads(cluster.cli("plan", "--name", "dry", "--local-path", str(tiny_gguf), "--replicas", "2",
                                 "--worker-selector", "pool=p", "--json").stdout)
    assert sorted(r["placement"]["worker"] for r in dry["replicas"]) == ["pa", "pb"]
    assert not any(d["name"] == "dry" for d in cluster.cli_json("ls"))  # a dry run records nothing

    # binpack: both on one worker, on the same GPU (the fullest that fits)
    binpack = deploy(cluster, tiny_gguf, "binpack", "--replicas", "2", "--placement", "binpack",
                     "--worker-selector", "pool=p")
    assert len({(i["worker"], tuple(i["gpu_indexes"])) for i in binpack}) == 1

    # selector: zone!=a excludes pa (and the session's unlabelled nodes via pool=p)
    zone_b = deploy(cluster, tiny_gguf, "zone-b", "--replicas", "2", "--worker-selector", "pool=p",
                    "--worker-selector", "zone!=a")
    assert {i["worker"] for i in zone_b} == {"pb"}

    # manual selection, 2 GPUs per replica: disjoint GPU sets
    manual = deploy(cluster, tiny_gguf, "manual", "--replicas", "2", "--gpus-per-replica", "2",
                    *[f"--gpu={w}:{g}" for w in ("pa", "pb") for g in (0, 1)])
    sets = [{(i["worker"], g) for g in i["gpu_indexes"]} for i in manual]
    assert [len(s) for s in sets] == [2, 2] and not (sets[0] & sets[1])
    assert all(i["state"] == "RUNNING" for i in manual)

    for name in ("spread", "binpack", "zone-b", "manual"):
        cluster.cli("rm", name)


def test_pending_with_reasons_then_placed_when_a_worker_joins(cluster: E2ECluster, pool: list[Child],
                                                              tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "late", "--local-path", str(tiny_gguf), "--worker-selector", "pool=late",
                "--no-wait")
    pending = wait_until(lambda: [i for i in cluster.instances("late") if "cannot be placed" in i["state_message"]],
                         timeout=120, what="an unplaceable PENDING instance")
    message = pending[0]["state_message"]
    assert pending[0]["state"] == "PENDING"
    for worker in ("node-a", "node-b", "pa", "pb"):
        assert worker in message
    assert "label selector 'pool=late' does not match" in message
    child = start_labelled_node(cluster, "pc", "A100-80G:1", {"pool": "late"})
    try:
        running = wait_until(
            lambda: [i for i in cluster.instances("late") if i["state"] == "RUNNING" and i["worker"] == "pc"],
            timeout=120, what="the pending instance to run on the new worker")
        assert running[0]["gpu_indexes"] == [0]
        cluster.cli("rm", "late")
    finally:
        stop_children([child])
        cluster.cli("workers", "rm", "pc", "--force", check=False)
