"""Memory used on a GPU by processes gpufleet did not start: the node reports it (NVML, or
declared for virtual GPUs) and placement never counts it as free (GPUStack #2852 did)."""

from __future__ import annotations

import json
from pathlib import Path

from gpufleet.cli.output import workers_table
from gpufleet.core.placement import ClusterSnapshot, Unplaceable, place
from gpufleet.core.schemas import WorkerView
from gpufleet.node.inventory import parse_virtual_gpus, used_outside
from tests.unit.test_placement import linear_estimator, model, placed, req

GiB = 1 << 30


def cluster(outside_gib: float) -> ClusterSnapshot:
    return ClusterSnapshot.model_validate({"workers": [
        {"name": "a", "memory_total": 256 * GiB,
         "gpus": [{"index": 0, "memory_total": 80 * GiB, "used_outside": int(outside_gib * GiB)}]}]})


def test_memory_used_outside_is_not_free() -> None:
    """80 GiB card, 30 GiB held by another program: 50 GiB free. 60 × 1 GiB needs 60.5: PENDING,
    and the reason shows the real free memory; 40 × 1 GiB (40.5) fits and leaves 9.5 GiB."""
    r = place(cluster(30), req(model(60, 1)), linear_estimator)
    assert isinstance(r, Unplaceable) and "largest free 50.0 GiB" in r.reasons["a"]
    assert placed(place(cluster(0), req(model(60, 1)), linear_estimator)).worker == "a"  # fits an idle card
    p = placed(place(cluster(30), req(model(40, 1)), linear_estimator))
    assert p.vram_claim == {0: int(40.5 * GiB)}


def test_nvml_usage_minus_our_own_processes() -> None:
    """NVML says 20 GiB used: our backend (pid 11) holds 12 GiB, pid 99 (not ours) 6 GiB, and 2 GiB
    belong to no listed process (another container's context): outside = 20 - 12 = 8 GiB."""
    assert used_outside(20 * GiB, {11: 12 * GiB, 99: 6 * GiB}, {11, 12}) == 8 * GiB
    assert used_outside(5 * GiB, {11: 6 * GiB}, {11}) == 0  # never negative (figures sampled apart)


def test_declared_gpus_carry_outside_usage(tmp_path: Path) -> None:
    spec = tmp_path / "gpus.json"
    spec.write_text(json.dumps([{"name": "H100", "memory_gib": 80, "count": 2, "used_outside_gib": 4.5}]))
    gpus = parse_virtual_gpus(str(spec))
    assert [g.memory_used_outside for g in gpus] == [int(4.5 * GiB)] * 2


def test_workers_shows_used_outside_gpufleet() -> None:
    w = WorkerView.model_validate({
        "name": "a", "address": "http://a:1", "cpu_count": 8, "memory_total": 64 * GiB, "work_queue": "node-a",
        "ready": True, "last_heartbeat": None,
        "gpus": [{"index": 0, "name": "H100", "memory_total": 80 * GiB, "memory_used_outside": 3 * GiB},
                 {"index": 1, "name": "H100", "memory_total": 80 * GiB}]})
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(workers_table([w]))
    text = console.export_text()
    assert "USED OUTSIDE GPUFLEET" in text and "0:3.0 GiB" in text
