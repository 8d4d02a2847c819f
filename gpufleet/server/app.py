"""The gpufleet server: REST API over the gpufleet database, and the trigger of flows.

It is the only process that writes the database. User operations are recorded
here synchronously (so bad input gets a 4xx and nothing is half-written) and
then carried out by Prefect flows, which report back through the internal API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, AsyncIterator, TypeVar

import httpx
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gpufleet import orchestration
from gpufleet.core.backends.params import BackendParamError
from gpufleet.core.schemas import (
    RpcServerInfo,
    DeploymentEdit,
    DeploymentEdited,
    DeploymentSpec,
    DeploymentView,
    InstanceStateUpdate,
    InstanceView,
    OperationAccepted,
    AppliedPlan,
    Heartbeat,
    ReconcileRequest,
    StateReports,
    StateReportsResult,
    ScaleRequest,
    WorkerEdit,
    WorkerRegistration,
    WorkerView,
)
from gpufleet.core.states import InstanceState, InvalidTransition
from gpufleet.server.controller import Controller, prefect_run_state
from gpufleet.server.events import EventSink
from gpufleet.server.stuck_runs import StuckRuns
from gpufleet.settings import KEEP_PREVIOUS_LOGS
from gpufleet.server.metrics import add_metrics
from gpufleet.server.placement_routes import add_placement_routes
from gpufleet.server.model_routes import add_model_routes
from gpufleet.server.schedule_routes import add_schedule_routes
from gpufleet.server.part_logs import part_worker
from gpufleet.server.backend_routes import NodeTrigger, add_backend_routes, prefect_node_trigger
from gpufleet.server.validation import (
    InvalidSpec,
    check_engine_on_workers,
    check_flags_known,
    engine_params,
    validate_spec,
)
from gpufleet.server.api_docs import add_api_docs
from gpufleet.server.auth import AuthMiddleware, Authenticator, principal_of
from gpufleet.server import authz
from gpufleet.server.deployment_access import (
    check_env, check_instance, check_reporter, flow_spec, node_reads, record_spec, scoped,
)
from gpufleet.server.key_routes import add_key_routes
from gpufleet.gateway.mount import add_gateway
from gpufleet.server.request_ids import add_request_ids
from gpufleet.server.state import ServerState, Trigger
from gpufleet.store import keys as key_store, ordering, plan_apply, repository as repo
from gpufleet.store.models import utcnow
from gpufleet.web import mount_web

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the header in which a client says when it issued a request (gpufleet.store.ordering)
ISSUED_AT = "Gpufleet-Issued-At"


def prefect_trigger(flow_name: str, parameters: dict[str, Any]) -> str:
    from prefect.deployments import run_deployment

    run = run_deployment(orchestration.deployment_name(flow_name), parameters=parameters, timeout=0)
    return str(run.id)  # type: ignore[union-attr]


def read_instances(state: ServerState, ids: list[int]) -> list[InstanceView]:
    with state.session() as s:
        return repo.list_instances(s, ids=ids)


def create_app(
    database_url: str,
    trigger: Trigger = prefect_trigger,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    run_controller: bool = True,
    node_trigger: NodeTrigger = prefect_node_trigger,
    auth: bool = True,
    run_state: Callable[[str], str | None] | None = None,
) -> FastAPI:
    """``auth=False``: every request is an anonymous admin (a single-user laptop; docs/auth.md)."""
    state = ServerState(database_url, trigger)
    authenticator = Authenticator(state, enabled=auth)
    state.events = EventSink(lambda ids: read_instances(state, ids))  # Prefect events; off without a Prefect API
    state.stuck_runs = StuckRuns(utcnow()) if state.events.enabled else None  # runs of dead processes end Crashed
    # how the controller reads the state of the runs it started (so it never starts a second run
    # for an operation that has one pending or running): Prefect's, whenever flows are Prefect's
    if run_state is None and trigger is prefect_trigger:
        run_state = prefect_run_state
    controller = Controller(state, trigger, run_state)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_startup:
            await asyncio.to_thread(on_startup)
        if run_controller:
            controller.start()
        yield
        if run_controller:
            await asyncio.to_thread(controller.stop)
        if on_shutdown:
            await asyncio.to_thread(on_shutdown)
        state.engine.dispose()

    # the API docs page is served from local assets (gpufleet.server.api_docs), not a CDN
    app = FastAPI(title="gpufleet", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gpufleet = state
    app.state.auth = authenticator

    @app.exception_handler(repo.NotFound)
    async def _not_found(_: Request, exc: repo.NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(repo.Conflict)
    async def _conflict(_: Request, exc: repo.Conflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(InvalidTransition)
    async def _transition(_: Request, exc: InvalidTransition) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(InvalidSpec)
    async def _invalid_spec(_: Request, exc: InvalidSpec) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(ordering.Superseded)
    async def _superseded(_: Request, exc: ordering.Superseded) -> JSONResponse:
        return JSONResponse(status_code=412, content={"detail": str(exc)})

    @app.exception_handler(BackendParamError)
    async def _param(_: Request, exc: BackendParamError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    def start_flow(operation: str, parameters: dict[str, Any], detail: str = "") -> OperationAccepted:
        try:
            run_id = state.trigger(operation, parameters)
        except Exception as exc:  # noqa: BLE001 - any Prefect failure is a 503 here
            log.exception("could not start flow %s", operation)
            raise HTTPException(
                503, f"recorded, but could not start the {operation} flow in Prefect: {exc}"
            ) from exc
        return OperationAccepted(
            operation=operation,
            flow_run_id=run_id,
            flow_run_url=orchestration.flow_run_url(run_id) if run_id else None,
            detail=detail,
        )

    # ------------------------------------------------------------ public API

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        with state.session() as s:
            workers = repo.list_workers(s, state.worker_timeout)
        return {"status": "ok", "workers": len(workers), "ready_workers": sum(w.ready for w in workers)}

    def known_workers() -> list[WorkerView]:
        """What the engine checks of a deploy compare against (read before anything is written)."""
        with state.session() as s:
            return repo.list_workers(s, state.worker_timeout)

    @app.post("/v1/deployments", status_code=202)
    def create_deployment(spec: DeploymentSpec, request: Request) -> OperationAccepted:
        check_env(principal_of(request), spec.name, spec.env, spec.secret_keys)
        spec, metadata, estimate = validate_spec(spec, known_workers())
        with state.session() as s:
            repo.create_deployment(s, spec, metadata, estimate)
        # What the user did not choose but should know: the file picked from a repo, an
        # unknown estimate and why.
        notes = list(metadata.notes) if metadata else []
        if not estimate.known and estimate.reason:
            notes.append(f"estimate unknown: {estimate.reason}")
        try:
            return start_flow("deploy", {"spec": flow_spec(spec)}, detail="\n".join(notes))
        except HTTPException:
            with state.session() as s:  # nothing half-written: undo the record
                repo.delete_deployment_row(s, spec.name)
            raise

    @app.put("/v1/deployments/{name}/record")
    def record_deployment(name: str, spec: DeploymentSpec, request: Request) -> DeploymentView:
        """Used by the deploy flow: create the record, or accept an identical one."""
        if spec.name != name:
            raise HTTPException(400, f"name in path ({name}) and body ({spec.name}) differ")
        check_env(principal_of(request), name, spec.env)
        with state.session() as s:
            spec, existing = record_spec(s, spec)  # 409 when it exists with another configuration
            if existing is not None:
                return existing
        spec, metadata, estimate = validate_spec(spec, known_workers())
        with state.session() as s:
            row = repo.create_deployment(s, spec, metadata, estimate)
            return repo.deployment_view(s, row)

    @app.get("/v1/deployments")
    def list_deployments(request: Request) -> list[DeploymentView]:
        with state.session() as s:
            return scoped(principal_of(request), repo.list_deployments(s))

    @app.get("/v1/deployments/{name}")
    def get_deployment(name: str) -> DeploymentView:
        with state.session() as s:
            return repo.get_deployment(s, name)

    def issued(raw: str | None) -> datetime:
        """When the client issued the request (see gpufleet.store.ordering); now when it does not say."""
        try:
            return ordering.parse_issued_at(raw) or utcnow()
        except ValueError as exc:
            raise HTTPException(400, f"Gpufleet-Issued-At: {exc}") from exc

    @app.patch("/v1/deployments/{name}")
    def edit_deployment(name: str, edit: DeploymentEdit, request: Request,
                        issued_at: str | None = Header(default=None, alias=ISSUED_AT)) -> DeploymentEdited:
        check_env(principal_of(request), name, {**(edit.env or {}), **(edit.secret_env or {})}, list(edit.secret_env or ()))
        with state.session() as s:
            current = repo.get_deployment(s, name)
        workers = known_workers()
        if edit.backend_params is not None:
            params = engine_params(current.backend, edit.backend_params, kv_cache=current.kv_cache is not None)
            check_flags_known(current.backend, edit.backend_version or current.backend_version, params, workers)
        if edit.backend_version is not None:
            check_engine_on_workers(current.backend, edit.backend_version, workers)
        when = issued(issued_at)
        with state.session() as s:
            ordering.admit_by_name(s, name, "config", when)
            row = repo.edit_deployment(s, name, edit)
            view = repo.deployment_view(s, row)
        # recorded; the `edit` flow run converges it (with --rollout: replaces instances)
        run = start_flow("edit", {"name": name, "rollout": edit.rollout})
        return DeploymentEdited(**view.model_dump(), flow_run_id=run.flow_run_id, flow_run_url=run.flow_run_url)

    @app.post("/v1/deployments/{name}/scale", status_code=202)
    def scale(name: str, body: ScaleRequest, trigger: bool = True,
              issued_at: str | None = Header(default=None, alias=ISSUED_AT)) -> OperationAccepted:
        """A scale issued before the one that last set the replica count is refused (412): a
        late request never undoes a newer one. The flow run carries the request's issue time,
        so that its own recording of the count is ordered the same way."""
        when = issued(issued_at)
        with state.session() as s:
            ordering.admit_by_name(s, name, "replicas", when)
            repo.set_replicas(s, name, body.replicas)
        if not trigger:
            return OperationAccepted(operation="scale", detail="recorded")
        return start_flow("scale", {"name": name, "replicas": body.replicas, "issued_at": when.isoformat()})

    @app.delete("/v1/deployments/{name}", status_code=202)
    def delete_deployment(name: str) -> OperationAccepted:
        with state.session() as s:
            repo.mark_deployment_deleting(s, name)
        return start_flow("delete", {"name": name})

    @app.get("/v1/instances")
    def list_instances(request: Request, deployment: str | None = None, worker: str | None = None,
                       id: list[int] | None = Query(default=None)) -> list[InstanceView]:  # noqa: A002 - the query name
        p = principal_of(request)
        with state.session() as s:
            if (own := node_reads(p, worker)) is not None:  # a node: its own instances, secrets in clear
                return repo.list_instances(s, deployment, own, ids=id, reveal=True)
            return scoped(p, repo.list_instances(s, deployment, worker, ids=id))

    @app.get("/v1/instances/{instance_id}")
    def get_instance(instance_id: int, request: Request) -> InstanceView:
        with state.session() as s:
            return check_instance(principal_of(request), repo.get_instance(s, instance_id), s)

    @app.delete("/v1/instances/{instance_id}", status_code=202)
    def delete_instance(instance_id: int, request: Request) -> OperationAccepted:
        with state.session() as s:
            check_instance(principal_of(request), repo.get_instance(s, instance_id), s, operate=True)
        return start_flow("delete-instance", {"instance_id": instance_id})

    @app.post("/v1/instances/{instance_id}/restart", status_code=202)
    def restart_instance(instance_id: int, request: Request) -> OperationAccepted:
        with state.session() as s:
            check_instance(principal_of(request), repo.get_instance(s, instance_id), s, operate=True)
        return start_flow("restart", {"instance_id": instance_id})

    @app.get("/v1/instances/{instance_id}/logs")
    async def instance_logs(
        instance_id: int, request: Request, tail: int | None = Query(default=None, ge=0), follow: bool = False,
        previous: int = Query(default=0, ge=0, le=KEEP_PREVIOUS_LOGS,
                              description="0: the current run's log; n: the n-th run before it"),
        part: str | None = Query(default=None, description="a part worker of a distributed instance: the logs of "
                                                           "the llama.cpp rpc-server(s) it runs for the instance"),
        gpu: int | None = Query(default=None, ge=0, description="with part: that GPU's rpc-server only"),
    ) -> StreamingResponse:
        with state.session() as s:
            inst = check_instance(principal_of(request), repo.get_instance(s, instance_id), s, operate=True)
            if inst.worker is None:
                raise HTTPException(409, f"instance {instance_id} is not placed on a worker yet")
            worker = part_worker(inst, part) if part is not None else inst.worker
            address = repo.get_worker(s, worker).address
            peer = key_store.peer_token(s, worker)  # the node asks the server for it (docs/auth.md)
        params: dict[str, Any] = {"follow": str(follow).lower()}
        if part is not None:
            params["rpc"] = "true"
            if gpu is not None:
                params["gpu"] = gpu
        if tail is not None:
            params["tail"] = tail
        if previous:
            params["previous"] = previous
        client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        try:
            upstream = await client.send(
                client.build_request("GET", f"{address}/v1/instances/{instance_id}/logs", params=params,
                                     headers={"Authorization": f"Bearer {peer}"} if peer else None),
                stream=True,
            )
        except httpx.TransportError as exc:
            await client.aclose()
            raise HTTPException(
                502, f"worker {worker} at {address} is unreachable for logs: {exc}"
            ) from exc
        if upstream.status_code != 200:
            body = (await upstream.aread()).decode(errors="replace")
            await upstream.aclose()
            await client.aclose()
            raise HTTPException(upstream.status_code, f"worker {worker}: {body}")

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), media_type="text/plain")

    @app.get("/v1/workers")
    def list_workers() -> list[WorkerView]:
        with state.session() as s:
            return repo.list_workers(s, state.worker_timeout)

    @app.post("/v1/workers")
    def register_worker(reg: WorkerRegistration, request: Request) -> WorkerView:
        authz.require_worker(principal_of(request), reg.name)
        with state.session() as s:
            repo.register_worker(s, reg)
        with state.session() as s:
            return next(w for w in repo.list_workers(s, state.worker_timeout) if w.name == reg.name)

    @app.patch("/v1/workers/{name}")
    def edit_worker(name: str, edit: WorkerEdit) -> WorkerView:
        """Set an operator's labels on a worker (they replace the ones set before and win over
        the node's own, which a node restart does not undo); selectors match them at once."""
        with state.session() as s:
            repo.set_worker_labels(s, name, edit.labels)
        with state.session() as s:
            return next(w for w in repo.list_workers(s, state.worker_timeout) if w.name == name)

    @app.delete("/v1/workers/{name}")
    def remove_worker(name: str, force: bool = False) -> dict[str, Any]:
        """Decommission a worker (409 while it beats, unless ``force``); its instances are
        rescheduled by the plan (manual GPU selections stay UNREACHABLE)."""
        with state.placement_lock, state.session() as s:
            instances = repo.remove_worker(s, name, state.worker_timeout, force)
        return {"status": "removed", "worker": name, "instances": instances}

    @app.post("/v1/workers/{name}/heartbeat")
    def heartbeat(name: str, body: Heartbeat | None = None) -> dict[str, Any]:
        """`resync` tells a node that was considered lost to re-report its backends. The body,
        when sent, says what other programs hold on each GPU now."""
        with state.session() as s:
            was_ready = any(w.ready for w in repo.list_workers(s, state.worker_timeout) if w.name == name)
            repo.heartbeat(s, name, body.gpus_used_outside if body else None)
        return {"status": "ok", "resync": not was_ready}

    # ------------------------------------------------------------ internal API (flows, nodes)

    @app.post("/v1/internal/deployments/{name}/reconcile")
    def reconcile(name: str, body: ReconcileRequest | None = None) -> AppliedPlan:
        """Apply the deployment's plan to the database in one transaction under the ledger;
        answer the node actions left (see gpufleet.core.plan)."""
        body = body or ReconcileRequest()
        try:
            with state.placement_lock, state.session() as s:
                applied = plan_apply.apply_plan(s, name, state.worker_timeout, stopped=body.stopped,
                                                retry_unplaced=body.retry_unplaced)
        except plan_apply.UnknownDeployment as exc:
            raise repo.NotFound(str(exc)) from exc
        state.events.placement_failed(applied.unplaced)
        return applied

    @app.post("/v1/internal/deployments/{name}/deleting")
    def deployment_deleting(name: str) -> dict[str, str]:
        with state.session() as s:
            repo.mark_deployment_deleting(s, name)
        return {"status": "ok"}

    @app.delete("/v1/internal/deployments/{name}")
    def remove_deployment(name: str) -> dict[str, str]:
        with state.placement_lock, state.session() as s:
            repo.delete_deployment_row(s, name)
        return {"status": "deleted"}

    @app.put("/v1/internal/instances/states")
    def report_states(body: StateReports, request: Request) -> StateReportsResult:
        """A node run's phase (STARTING, RUNNING, ERROR …) for all its instances in one request;
        each report stands alone: one refused or missing instance does not refuse the others.
        A node may report only instances placed on it (403 for the whole request otherwise)."""
        with state.session() as s:
            check_reporter(principal_of(request), list(body.reports), s)
            result = repo.update_instance_states(s, body.reports)
        state.events.instances_changed(result.applied)
        if any(body.reports[i].state == InstanceState.ERROR for i in result.applied):
            controller.wake()  # a failure's first restart is due at once
        return result

    @app.put("/v1/internal/instances/{instance_id}/state")
    def report_state(instance_id: int, update: InstanceStateUpdate, request: Request) -> InstanceView:
        with state.session() as s:
            check_reporter(principal_of(request), [instance_id], s)
            view = repo.instance_view(repo.update_instance_state(s, instance_id, update))
        state.events.instances_changed([instance_id])
        if update.state == InstanceState.ERROR:
            controller.wake()  # a failure's first restart is due at once
        return view

    @app.put("/v1/internal/instances/{instance_id}/rpc-servers/{worker}")
    def report_rpc_servers(instance_id: int, worker: str, servers: list[RpcServerInfo]) -> InstanceView:
        """A part worker of a distributed instance says which RPC servers it runs for it."""
        with state.session() as s:
            return repo.instance_view(repo.report_rpc_servers(s, instance_id, worker, servers))

    @app.post("/v1/internal/instances/{instance_id}/deleting")
    def instance_deleting(instance_id: int) -> InstanceView:
        with state.session() as s:
            return repo.instance_view(repo.mark_instance_deleting(s, instance_id))

    @app.delete("/v1/internal/instances/{instance_id}")
    def remove_instance(instance_id: int) -> dict[str, str]:
        with state.placement_lock, state.session() as s:
            repo.delete_instance_row(s, instance_id)
        return {"status": "deleted"}

    add_request_ids(app, state)
    app.add_middleware(AuthMiddleware, authenticator=authenticator)  # outside request ids: a refused call claims none
    add_key_routes(app, state, authenticator)
    add_metrics(app)
    add_placement_routes(app, state)
    add_backend_routes(app, state, node_trigger)
    add_model_routes(app)
    add_schedule_routes(app, state)
    add_api_docs(app)
    add_gateway(app, state)  # the OpenAI-compatible /v1/* endpoints (gpufleet.gateway)
    mount_web(app)  # the web page under /, after every API route
    return app
