"""Cancelling a deploy or scale run (Prefect UI: Cancel) while it converges.

gpufleet's flow runs execute on threads of its own processes (workers/inprocess.py), which
Prefect cannot kill; so the recipe cooperates: while it waits on node runs it watches its
own state (tasks/dispatch.py), and any step Prefect refuses because the run is Cancelling
ends the same way. Then it stops what it started that has not begun — node runs still
Scheduled or Pending are cancelled — lets node runs already running finish their instances
(serving is idempotent, and an instance half-served is worse than one served), and ends
Cancelled, saying which. The deployment stays consistent: the database holds what exists,
and the controller converges the rest (instances left placed but not served are re-driven
by a `reconcile` run once the deployment has been idle for REDRIVE_AFTER_S).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.exceptions import Abort
from prefect.runtime import flow_run
from prefect.states import Cancelled

#: Node runs each control flow run started (flow run id -> ids), for cancelling them.
STARTED: dict[str, list[UUID]] = {}


def note_started(run_ids: list[UUID]) -> None:
    """Only runs under :func:`cancellable` keep a list (it drops it when the run ends)."""
    started = STARTED.get(str(flow_run.id))
    if started is not None:
        started.extend(run_ids)


def own_run_cancelling() -> bool:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    return state is not None and (state.is_cancelling() or state.is_cancelled())


def cancel_unstarted(run_ids: list[UUID]) -> list[str]:
    """Cancel the node runs that have not begun; returns them."""
    cancelled = []
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            run = client.read_flow_run(run_id)
            if run.state is not None and (run.state.is_scheduled() or run.state.is_pending()):
                client.set_flow_run_state(run_id, Cancelled(message="its control run was cancelled"), force=True)
                cancelled.append(run.name or str(run_id))
    return cancelled


def cancellable(step: Callable[[], Any]) -> Any:
    """``step()``; if it stops because this run was cancelled, the Cancelled state instead."""
    key = str(flow_run.id)
    STARTED[key] = []
    try:
        return step()
    except (Exception, Abort):  # Abort: Prefect refused a task run of this Cancelling run
        if not own_run_cancelling():
            raise
        cancelled = cancel_unstarted(STARTED.get(key, []))
        message = ("cancelled; node runs not yet begun were cancelled: " + (", ".join(cancelled) or "none")
                   + "; node runs already running finish their instances, and the controller converges the rest")
        get_run_logger().warning(message)
        return Cancelled(message=message)
    finally:
        STARTED.pop(key, None)

