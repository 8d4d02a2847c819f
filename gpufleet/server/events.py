"""Prefect events for what happens to instances and workers, so Prefect automations can
react to gpufleet (e.g. "an instance crash-loops → run scale/gpufleet with replicas 0").

Events (resource ``gpufleet.instance.<id>``, related ``gpufleet.deployment.<name>`` with role
``deployment`` and ``gpufleet.worker.<name>`` with role ``worker``):

- ``gpufleet.instance.<state>`` (``running``, ``error``, ``unreachable``, ``starting``, …) when
  an instance's state changes; the payload carries the state message (an ERROR's reason);
- ``gpufleet.instance.crash-looping`` when an instance fails again after restarts without a
  stable run between;
- ``gpufleet.instance.placement-failed`` when an instance stays PENDING, with why per worker;
- ``gpufleet.worker.lost`` / ``gpufleet.worker.ready`` (resource ``gpufleet.worker.<name>``)
  when a node stops or resumes heartbeating.

Emitting never slows the routes that store states: they put the ids on a bounded queue and
one background thread reads the instances, builds the events and posts them in batches to
Prefect's ``POST /events``; a full queue or an unreachable Prefect drops events (logged).
Off when no Prefect API is configured (``PREFECT_API_URL`` unset).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

from gpufleet.core.schemas import InstanceView
from gpufleet.core.states import InstanceState

log = logging.getLogger("gpufleet.events")
MAX_QUEUED = 10_000
MAX_BATCH = 200
#: Progress reports (``DOWNLOADING 42 %``) repeat a state: one event when it is entered.
PREFIX = "gpufleet"

#: Reads instances by id (from the thread; the routes only pass ids).
Lookup = Callable[[list[int]], list[InstanceView]]
#: Sends a batch of events (JSON objects) somewhere.
Send = Callable[[list[dict[str, Any]]], None]


def prefect_api_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def send_to_prefect(events: list[dict[str, Any]]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=events)


def _event(name: str, resource: dict[str, str], related: list[dict[str, str]],
           payload: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(uuid4()), "occurred": datetime.now(timezone.utc).isoformat(), "event": name,
            "resource": resource, "related": related, "payload": payload}


def instance_resource(inst: InstanceView) -> tuple[dict[str, str], list[dict[str, str]]]:
    resource = {"prefect.resource.id": f"{PREFIX}.instance.{inst.id}", "prefect.resource.name": inst.name,
                "gpufleet.deployment": inst.deployment, "gpufleet.worker": inst.worker or ""}
    related = [{"prefect.resource.id": f"{PREFIX}.deployment.{inst.deployment}",
                "prefect.resource.role": "deployment", "prefect.resource.name": inst.deployment}]
    if inst.worker:
        related.append({"prefect.resource.id": f"{PREFIX}.worker.{inst.worker}",
                        "prefect.resource.role": "worker", "prefect.resource.name": inst.worker})
    return resource, related


def instance_events(inst: InstanceView) -> list[dict[str, Any]]:
    resource, related = instance_resource(inst)
    payload = {"state": inst.state.value, "message": inst.state_message, "restart_count": inst.restart_count,
               "deployment": inst.deployment, "worker": inst.worker}
    events = [_event(f"{PREFIX}.instance.{inst.state.value.lower()}", resource, related, payload)]
    if inst.state == InstanceState.ERROR and inst.crash_looping:
        events.append(_event(f"{PREFIX}.instance.crash-looping", resource, related, payload))
    return events


class EventSink:
    """The queue, its thread, and what was last emitted per instance (one event per state entered)."""

    def __init__(self, lookup: Lookup, send: Send | None = None, enabled: bool | None = None) -> None:
        self.enabled = prefect_api_configured() if enabled is None else enabled
        self._lookup = lookup
        self._send = send or send_to_prefect
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(MAX_QUEUED)
        self._last: dict[int, tuple[str, int]] = {}
        self._unplaced: dict[int, str] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- producers (any thread; never block)
    def instances_changed(self, ids: list[int]) -> None:
        self._put(("instances", list(ids)))

    def placement_failed(self, instances: dict[int, str]) -> None:
        if instances:
            self._put(("unplaced", dict(instances)))

    def worker_changed(self, name: str, ready: bool) -> None:
        self._put(("worker", (name, ready)))

    def _put(self, item: tuple[str, Any]) -> None:
        if not self.enabled:
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.warning("event queue full; dropping %s", item[0])

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="gpufleet-events", daemon=True)
                self._thread.start()

    # -- the thread
    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < MAX_BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                events = self.build(items)
                if events:
                    self._send(events)
            except Exception as exc:  # noqa: BLE001 - events are best effort; the thread must live
                log.warning("could not emit %d gpufleet event(s) to Prefect: %s", len(items), exc)

    def build(self, items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        ids = sorted({i for kind, v in items if kind in ("instances", "unplaced")
                      for i in (v if kind == "instances" else v.keys())})
        views = {v.id: v for v in self._lookup(ids)} if ids else {}
        events: list[dict[str, Any]] = []
        for kind, value in items:
            if kind == "instances":
                for iid in value:
                    inst = views.get(iid)
                    if inst is None:
                        continue
                    seen = (inst.state.value, inst.restart_count)
                    if self._last.get(iid) == seen:
                        continue  # a repeated report of the same state (download progress)
                    self._last[iid] = seen
                    events += instance_events(inst)
            elif kind == "unplaced":
                for iid, reason in value.items():
                    if iid in views and self._unplaced.get(iid) != reason:
                        self._unplaced[iid] = reason
                        resource, related = instance_resource(views[iid])
                        events.append(_event(f"{PREFIX}.instance.placement-failed", resource, related,
                                             {"reason": reason, "deployment": views[iid].deployment}))
            elif kind == "worker":
                name, ready = value
                events.append(_event(f"{PREFIX}.worker.{'ready' if ready else 'lost'}",
                                     {"prefect.resource.id": f"{PREFIX}.worker.{name}",
                                      "prefect.resource.name": name}, [], {"worker": name}))
        return events
