"""The database-derived gauges of GET /metrics, read at scrape time: instances by state, placement
failures (PENDING with nowhere to go), GPU memory claimed vs total, restarts — against what the
database holds after a real plan was applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gpufleet.core.schemas import InstanceStateUpdate
from gpufleet.core.states import InstanceState
from gpufleet.store import repository as repo
from gpufleet.store.models import InstanceRow
from tests.support.gateway import GatewayServer, start_gateway_server


@pytest.fixture
def server(tmp_path: Path, tiny_gguf: Path) -> Iterator[GatewayServer]:
    s = start_gateway_server(tmp_path, tiny_gguf)
    try:
        yield s
    finally:
        s.stop()


def gauge(metrics: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and labels.items() <= dict(ls).items())


def test_cluster_gauges_match_the_database(server: GatewayServer) -> None:
    ids = server.deploy("many", 120)  # more than the worker's GPU and RAM take: some stay PENDING
    with server.sessions() as s:
        rows = s.execute(select(InstanceRow.state, InstanceRow.placement, InstanceRow.state_message)
                         .where(InstanceRow.id.in_(ids))).all()
    unplaced = sum(1 for state, placement, message in rows
                   if state == InstanceState.PENDING and placement is None and message)
    claimed = sum(int(v) for _, placement, _ in rows if placement for v in placement["vram_claim"].values())
    scheduled = sum(1 for state, _, _ in rows if state == InstanceState.SCHEDULED)
    assert unplaced > 0 and scheduled > 0 and claimed > 0
    running = next(i for i, (state, _, _) in zip(ids, rows) if state == InstanceState.SCHEDULED)
    with server.sessions.begin() as s:
        for state in (InstanceState.STARTING, InstanceState.RUNNING):
            repo.update_instance_state(s, running, InstanceStateUpdate(state=state, port=1, restart_count=3))

    m = server.metrics()
    assert gauge(m, "gpufleet_instances_unplaced", deployment="many") == unplaced
    assert gauge(m, "gpufleet_instances", deployment="many", state="PENDING") == unplaced
    assert gauge(m, "gpufleet_instances", deployment="many", state="SCHEDULED") == scheduled - 1
    assert gauge(m, "gpufleet_instances", deployment="many", state="RUNNING") == 1
    assert gauge(m, "gpufleet_instance_restarts", deployment="many", instance=server.instance_name(running)) == 3
    assert gauge(m, "gpufleet_gpu_memory_claimed_bytes", worker="w1", gpu="0") == claimed
    assert gauge(m, "gpufleet_gpu_memory_total_bytes", worker="w1", gpu="0") == 16 * (1 << 30)
    assert claimed <= 16 * (1 << 30)

    server.mark_deleting(running)
    assert gauge(server.metrics(), "gpufleet_instances_deleting", deployment="many") == 1
