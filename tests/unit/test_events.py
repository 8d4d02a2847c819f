"""gpufleet.server.events: one event per state entered, the deployment and worker related,
crash-looping and placement failures, and producers that never block."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from gpufleet.core.schemas import InstanceView
from gpufleet.core.states import InstanceState
from gpufleet.server.events import EventSink


def view(iid: int, state: InstanceState, restarts: int = 0, looping: bool = False, message: str = "") -> InstanceView:
    return InstanceView.model_construct(
        id=iid, name=f"tiny-{iid}", deployment="tiny", state=state, state_message=message, worker="node-a",
        restart_count=restarts, crash_looping=looping, deleting=False, created_at=datetime.now(timezone.utc))


def test_one_event_per_state_entered_with_related_resources() -> None:
    views = {1: view(1, InstanceState.DOWNLOADING)}
    sink = EventSink(lambda ids: [views[i] for i in ids if i in views], send=lambda e: None, enabled=True)
    first = sink.build([("instances", [1])])
    assert [e["event"] for e in first] == ["gpufleet.instance.downloading"]
    assert sink.build([("instances", [1])]) == []  # progress reports repeat the state
    views[1] = view(1, InstanceState.ERROR, restarts=3, looping=True, message="exited with 1")
    events = sink.build([("instances", [1])])
    assert [e["event"] for e in events] == ["gpufleet.instance.error", "gpufleet.instance.crash-looping"]
    assert events[0]["resource"]["prefect.resource.id"] == "gpufleet.instance.1"
    assert events[0]["payload"]["message"] == "exited with 1"
    assert {r["prefect.resource.role"]: r["prefect.resource.id"] for r in events[0]["related"]} == {
        "deployment": "gpufleet.deployment.tiny", "worker": "gpufleet.worker.node-a"}


def test_placement_failures_and_workers() -> None:
    sink = EventSink(lambda ids: [view(i, InstanceState.PENDING) for i in ids], send=lambda e: None, enabled=True)
    [e] = sink.build([("unplaced", {4: "node-a: not enough VRAM"})])
    assert (e["event"], e["payload"]["reason"]) == ("gpufleet.instance.placement-failed", "node-a: not enough VRAM")
    assert sink.build([("unplaced", {4: "node-a: not enough VRAM"})]) == []  # the same reason again
    [lost] = sink.build([("worker", ("node-b", False))])
    assert (lost["event"], lost["resource"]["prefect.resource.id"]) == ("gpufleet.worker.lost", "gpufleet.worker.node-b")


def test_off_without_a_prefect_api_and_producers_never_block() -> None:
    sent: list[list[dict]] = []
    off = EventSink(lambda ids: [], send=sent.append, enabled=False)
    off.instances_changed([1])
    assert off._thread is None

    def slow_lookup(ids: list[int]) -> list[InstanceView]:
        time.sleep(0.5)
        return [view(i, InstanceState.RUNNING) for i in ids]

    on = EventSink(slow_lookup, send=sent.append, enabled=True)
    t0 = time.monotonic()
    for i in range(100):
        on.instances_changed([i])
    assert time.monotonic() - t0 < 0.2
    deadline = time.monotonic() + 5
    while sum(len(b) for b in sent) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(len(b) for b in sent) == 100
