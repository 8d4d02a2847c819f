"""Placement endpoints.

- ``POST /v1/internal/instances/{id}/place`` (the select-gpus task): place one
  instance against the claim ledger, under the server's lock and the database's
  ledger lock, in one transaction.
- ``POST /v1/internal/place``: several instances at once (one transaction, one
  read of the ledger) — what a flow placing many replicas should call.
- ``GET /v1/cluster/snapshot``: the live cluster in the snapshot file format
  (`gpufleet cluster snapshot`).
- ``POST /v1/plan``: dry run of a whole deployment against the live cluster or a
  given snapshot (`gpufleet plan`); writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Body, FastAPI, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpufleet.core.placement import ClusterSnapshot, PlanResult
from gpufleet.core.schemas import DeploymentSpec, InstanceView
from gpufleet.server.validation import validate_spec
from gpufleet.store import repository as repo

if TYPE_CHECKING:
    from gpufleet.server.state import ServerState


class PlaceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance_ids: list[int] = Field(min_length=1, max_length=1000)


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: DeploymentSpec
    cluster: ClusterSnapshot | None = None


def validation_message(exc: ValidationError) -> str:
    """One line per error, naming the field: ``spec.placement.worker_selector: ...``."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())


def add_placement_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/internal/instances/{instance_id}/place", response_model=InstanceView)
    def place(instance_id: int) -> Response:
        """A body (the first API sent an estimate) is not read: the server estimates itself.

        The view is serialized once, here: FastAPI would validate the returned model again
        and then encode it, which on this one-replica-per-request path cost as much as the
        placement (benchmarks/placement_ledger.py --through-server)."""
        with state.placement_lock, state.session() as s:
            row = repo.place_instance(s, instance_id, state.worker_timeout)
            return Response(repo.instance_view(row).model_dump_json(), media_type="application/json")

    @app.post("/v1/internal/place")
    def place_many(body: PlaceRequest) -> list[InstanceView]:
        """Several instances in one transaction and one read of the ledger, in order."""
        with state.placement_lock, state.session() as s:
            return [repo.instance_view(r) for r in repo.place_instances(s, body.instance_ids, state.worker_timeout)]

    @app.get("/v1/cluster/snapshot")
    def cluster_snapshot() -> ClusterSnapshot:
        with state.session() as s:
            return repo.cluster_snapshot(s, state.worker_timeout)

    @app.post("/v1/plan")
    def plan(raw: dict[str, Any] = Body(...)) -> PlanResult:
        """Validated here so that a malformed selector or --gpu is a 400 naming the field."""
        try:
            body = PlanRequest.model_validate(raw)
        except ValidationError as exc:
            raise HTTPException(400, validation_message(exc)) from exc
        spec, metadata, _ = validate_spec(body.spec)
        with state.session() as s:
            return repo.plan_spec(s, spec, metadata, state.worker_timeout, body.cluster)
