"""No flow run stays Running forever because the process running it is gone.

gpufleet's flow runs execute inside its own processes (workers/inprocess.py): control runs in
the gpufleet server, node-local runs in each node agent. When such a process dies, Prefect
only notices through its zombie detection (heartbeats missed for minutes); gpufleet knows
sooner, and says so in the run's state:

- a node that stops heartbeating (the controller's lost worker): its runs still Pending or
  Running on ``node-<name>`` become Crashed, naming the node, and those still Scheduled (the node
  never picked them up) Cancelled, so the control run waiting on them goes on at once (and the
  plan re-drives what they were doing: a placement on it is released and made again);
- a gpufleet server that starts: control runs left Pending or Running by a gpufleet server
  process of this host that is gone become Crashed, "interrupted by a server restart" (its
  controller re-drives them); runs another live server (or another host) runs are left alone.

Prefect calls run on a daemon thread, never in the control loop's round.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gpufleet import orchestration

log = logging.getLogger("gpufleet.stuck_runs")


def process_gone(infrastructure_pid: str | None) -> bool:
    """The in-process worker that took the run (``host:pid:run``, workers/inprocess.py) is a dead
    process of this host. A run no worker recorded is taken for orphaned; one taken on another
    host is not (another gpufleet server may be running it)."""
    if not infrastructure_pid:
        return True
    parts = infrastructure_pid.split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def crash_runs(queue: str, message: str, started_before: datetime | None = None,
               only: Callable[[Any], bool] | None = None, unstarted: bool = False) -> list[str]:
    """Set the Pending/Running runs of ``queue`` (work pool gpufleet) to Crashed with ``message``
    (those started before ``started_before`` and for which ``only(run)`` holds, when given);
    with ``unstarted``, its Scheduled runs too, to Cancelled (nothing of them ran)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
        WorkQueueFilter,
        WorkQueueFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Crashed

    types = [StateType.RUNNING, StateType.PENDING] + ([StateType.SCHEDULED] if unstarted else [])
    crashed = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[orchestration.POOL])),
            work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=[queue])),
        )
        for run in runs:
            if started_before is not None and run.start_time is not None and run.start_time >= started_before:
                continue
            if only is not None and not only(run):
                continue
            scheduled = run.state is not None and run.state.type == StateType.SCHEDULED
            end = Cancelled(message=f"{message}; it had not begun") if scheduled else Crashed(message=message)
            client.set_flow_run_state(run.id, end, force=True)
            crashed.append(str(run.id))
    if crashed:
        log.warning("%s: runs %s ended (Crashed, or Cancelled if not begun): %s", queue, ", ".join(crashed), message)
    return crashed


class StuckRuns:
    """What the controller calls; each call's Prefect work runs on its own daemon thread."""

    def __init__(self, started_at: datetime) -> None:
        self.started_at = started_at

    def _async(self, target: Any, *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except Exception as exc:  # noqa: BLE001 - best effort; Prefect's zombie detection is the fallback
                log.warning("could not end the stuck runs (%s): %s", args[0] if args else "", exc)

        threading.Thread(target=run, name="gpufleet-stuck-runs", daemon=True).start()

    def worker_lost(self, worker: str) -> None:
        self._async(crash_runs, orchestration.node_queue(worker),
                    f"node {worker} stopped heartbeating (its worker is gone)", None, None, True)

    def server_started(self) -> None:
        self._async(crash_runs, orchestration.CONTROL_QUEUE,
                    "interrupted by a gpufleet server restart; the controller re-drives what it was doing",
                    self.started_at, lambda run: process_gone(run.infrastructure_pid))
