"""Backend versions on workers: install one (a node-local flow run), take a node's new
engine list, and follow a flow run from the CLI.

`POST /v1/workers/{name}/backends` checks the request here (engine, version, device,
worker) so that bad input is a 4xx and no flow run is started; the `install-backend`
run on the worker's own queue does the work and reports what the node can run now
through `PUT /v1/internal/workers/{name}/engines`, so `gpufleet backends ls` and the
deploy-time version check see it without waiting for the node to register again.
`GET /v1/runs/{id}` lets the CLI show the run's progress through the gpufleet server,
which reaches Prefect where a user's machine may not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
from fastapi import FastAPI, HTTPException, Query

from gpufleet import orchestration
from gpufleet.core.backends.registry import UnknownEngine, engine
from gpufleet.core.schemas import BackendInstallRequest, EngineInstall, OperationAccepted, RunProgress, WorkerView
from gpufleet.server.validation import installable_version_problem
from gpufleet.store import repository as repo

log = logging.getLogger(__name__)

INSTALL_FLOW = "install-backend"
LOG_PAGE = 200  # the most Prefect returns per request

#: (flow name, worker, parameters) -> flow run id, on the worker's own queue
NodeTrigger = Callable[[str, WorkerView, dict[str, Any]], str]


def prefect_node_trigger(flow_name: str, worker: WorkerView, parameters: dict[str, Any]) -> str:
    """Start a node-local flow run on the worker's queue and poke its worker so it
    picks the run up at once (best effort: its regular poll is the fallback)."""
    from prefect.deployments import run_deployment

    run = run_deployment(orchestration.deployment_name(flow_name), parameters=parameters,
                         work_queue_name=worker.work_queue, timeout=0)
    try:
        httpx.post(f"{worker.address}/v1/poke", timeout=2)
    except httpx.HTTPError:
        pass
    return str(run.id)  # type: ignore[union-attr]


def default_device(worker: WorkerView) -> str:
    """CUDA where the worker has real NVIDIA GPUs; declared (virtual) GPUs are served
    by the CPU, so a worker with only those gets the CPU build."""
    return "cuda" if any(g.vendor == "nvidia" and not g.virtual for g in worker.gpus) else "cpu"


def check_install(req: BackendInstallRequest, worker: WorkerView) -> str:
    """The device kind to install for, or a 400/409 saying why not."""
    try:
        info = engine(req.engine)
    except UnknownEngine as exc:
        raise HTTPException(400, str(exc)) from exc
    problem = installable_version_problem(req.engine, req.version)
    if problem is not None:
        raise HTTPException(400, f"cannot install {req.engine} {req.version}: {problem}")
    device = req.device or default_device(worker)
    if info.installer == "pip" and device not in dict(info.packages):
        raise HTTPException(400, f"{req.engine} has no {device} build; choose --device "
                                 f"{' or '.join(dict(info.packages))}")
    if info.installer != "pip" and device == "rocm":
        raise HTTPException(400, "scripts/build-llama-cpp.sh builds llama.cpp for CPU or CUDA, not ROCm")
    if device == "cuda" and default_device(worker) != "cuda":
        raise HTTPException(400, f"worker {worker.name} has no NVIDIA GPU it can drive (declared GPUs run on "
                                 f"its CPU); install the CPU build with --device cpu")
    if not worker.ready:
        raise HTTPException(409, f"worker {worker.name} is not ready (no heartbeat since {worker.last_heartbeat}); "
                                 "start its node (`gpufleet node`) and try again")
    return device


def read_run(flow_run_id: str, offset: int) -> RunProgress:
    """The run's state and its log lines (flow and task runs) from ``offset`` on."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        raise HTTPException(400, f"{flow_run_id!r} is not a flow run id") from None
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                    offset=offset, limit=LOG_PAGE, sort=LogSort.TIMESTAMP_ASC)
    except ObjectNotFound:
        raise HTTPException(404, f"flow run {flow_run_id} not found in Prefect") from None
    except (PrefectHTTPStatusError, httpx.HTTPError) as exc:
        raise HTTPException(502, f"cannot read flow run {flow_run_id} from Prefect: {exc}") from exc
    st = run.state
    return RunProgress(
        flow_run_id=flow_run_id,
        state=st.name if st else "Unknown",
        final=bool(st and st.is_final()),
        completed=bool(st and st.is_completed()),
        message=(st.message or "") if st else "",
        logs=[entry.message for entry in logs],
        next_offset=offset + len(logs),
    )


def add_backend_routes(app: FastAPI, state: Any, node_trigger: NodeTrigger) -> None:
    def worker_view(name: str) -> WorkerView:
        with state.session() as s:
            found = next((w for w in repo.list_workers(s, state.worker_timeout) if w.name == name), None)
        if found is None:
            raise HTTPException(404, f"worker {name!r} is not registered; `gpufleet workers` lists them")
        return found

    @app.post("/v1/workers/{name}/backends", status_code=202)
    def install_backend(name: str, req: BackendInstallRequest) -> OperationAccepted:
        """Install an engine version on a worker: an `install-backend` run on its queue."""
        worker = worker_view(name)
        device = check_install(req, worker)
        params = {"engine": req.engine, "version": req.version, "device": device}
        try:
            run_id = node_trigger(INSTALL_FLOW, worker, params)
        except Exception as exc:  # noqa: BLE001 - any Prefect failure is a 503 here
            log.exception("could not start %s on %s", INSTALL_FLOW, name)
            raise HTTPException(503, f"could not start the {INSTALL_FLOW} flow in Prefect: {exc}") from exc
        return OperationAccepted(operation=INSTALL_FLOW, flow_run_id=run_id,
                                 flow_run_url=orchestration.flow_run_url(run_id) if run_id else None,
                                 detail=f"installing {req.engine} {req.version} ({device}) on {name}")

    @app.put("/v1/internal/workers/{name}/engines")
    def report_engines(name: str, engines: list[EngineInstall]) -> WorkerView:
        """A node says what it can run now (after an install run)."""
        with state.session() as s:
            repo.set_worker_engines(s, name, engines)
        return worker_view(name)

    @app.get("/v1/runs/{flow_run_id}")
    def run_progress(flow_run_id: str, offset: int = Query(default=0, ge=0)) -> RunProgress:
        return read_run(flow_run_id, offset)
