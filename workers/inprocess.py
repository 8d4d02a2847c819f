"""A Prefect worker that runs gpufleet's flows inside its own process.

Prefect's process worker starts a new Python interpreter for every flow run
(about 3 s each on a small machine: interpreter, imports, flow loading, and a
1 s heartbeat join at the end). gpufleet's flows are short recipes whose
tasks mostly wait on HTTP calls and child processes, so this worker imports
them once and runs each flow run on a thread of the node agent (or of the
server, for the control queue): polling, states, retries, logs and the UI
behave as with any Prefect worker, and a run starts in well under a second.

Polling is the fallback, not the fast path: every poll writes to Prefect's
database (a SQLite-backed server then refuses concurrent writes with 503s), so
gpufleet polls slowly and *pokes* the worker whenever it has just created a run
for it (`poke()`: the server after triggering a control flow, a control flow
after routing a run to a node). Runs started from the Prefect UI are picked up
by the next regular poll.

Backends launched by a flow run are separate processes in their own sessions;
they are tracked by the node's registry, not by the flow run.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)

from flows import all_flows


class GpufleetWorkerResult(BaseWorkerResult):
    """Outcome of one in-process flow run."""


class GpufleetWorker(BaseWorker[BaseJobConfiguration, BaseVariables, GpufleetWorkerResult]):
    type = "gpufleet"
    job_configuration = BaseJobConfiguration
    job_configuration_variables = BaseVariables
    _description = "Runs gpufleet flows in-process on a gpufleet node agent or server."
    _display_name = "gpufleet"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flows = all_flows()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.get_running_loop()
        await super().start(*args, **kwargs)

    def poke(self) -> bool:
        """Poll for scheduled runs now (callable from any thread). False before start."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        asyncio.run_coroutine_threadsafe(self._poll_now(), loop)
        return True

    async def _poll_now(self) -> None:
        try:
            await self.get_and_submit_flow_runs()
        except Exception:  # noqa: BLE001 - the regular poll will try again
            self._logger.debug("poke poll failed", exc_info=True)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: BaseJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> GpufleetWorkerResult:
        api_flow = await self.client.read_flow(flow_run.flow_id)
        flow = self._flows.get(api_flow.name)
        # host:pid:run: the gpufleet server tells the runs a dead process of its own host left Running
        # (gpufleet/server/stuck_runs.py) from those another live server runs
        identifier = f"{socket.gethostname()}:{os.getpid()}:{flow_run.id}"
        if task_status is not None:
            task_status.started(identifier)  # type: ignore[arg-type]
        if flow is None:
            self._logger.error("flow %r is not a gpufleet flow; cannot run it here", api_flow.name)
            return GpufleetWorkerResult(identifier=identifier, status_code=2)
        state = await anyio.to_thread.run_sync(self._run_sync, flow, flow_run)
        return GpufleetWorkerResult(identifier=identifier, status_code=0 if state.is_completed() else 1)

    @staticmethod
    def _run_sync(flow: Any, flow_run: FlowRun) -> Any:
        # The flow-run heartbeat thread exists to detect crashed subprocesses; this
        # worker's own liveness covers that, and joining the thread costs ~1 s per run.
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return run_flow(flow, flow_run=flow_run, return_type="state")
