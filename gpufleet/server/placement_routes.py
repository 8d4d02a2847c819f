"""Placement endpoints: place an instance against the claim ledger (internal,
called by the select-gpus task)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from gpufleet.core.schemas import InstanceView, ResourceEstimate
from gpufleet.store import repository as repo

if TYPE_CHECKING:
    from gpufleet.server.app import ServerState


def add_placement_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/internal/instances/{instance_id}/place")
    def place(instance_id: int, estimate: ResourceEstimate) -> InstanceView:
        with state.placement_lock, state.session() as s:
            row = repo.place_instance(s, instance_id, estimate, state.worker_timeout)
            return repo.instance_view(row)
