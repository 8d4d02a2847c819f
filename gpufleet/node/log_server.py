"""The node agent's small HTTP API: backend logs, read where they are written.

The logs answer only the server's credential for this node (given at join, docs/auth.md):
backend logs hold prompts and paths. ``/v1/health`` and ``/v1/poke`` (poll Prefect now; it
reads nothing and starts nothing Prefect has not scheduled) stay open."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import StreamingResponse

from gpufleet.node import node_auth, run_logs
from gpufleet.node.context import NodeContext
from gpufleet.node.logs import read_log
from gpufleet.node.registry import BackendRegistry


def find_log(node: NodeContext, instance_id: int) -> Path | None:
    matches = sorted(node.logs_dir.glob(f"{instance_id}-*.log"))
    return matches[-1] if matches else None


def create_log_app(
    node: NodeContext, registry: BackendRegistry, poke: Callable[[], object] = lambda: None,
    server_key: Callable[[], str | None] = lambda: None,
) -> FastAPI:
    app = FastAPI(title=f"gpufleet node {node.name}")

    @app.post("/v1/poke")
    def poke_worker() -> dict[str, str]:
        """A run was just routed to this node's queue: poll for it now."""
        poke()
        return {"status": "ok"}

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "node": node.name}

    @app.get("/v1/instances/{instance_id}/logs")
    def logs(
        instance_id: int, tail: int | None = Query(default=None, ge=0), follow: bool = False,
        previous: int = Query(default=0, ge=0, le=run_logs.KEEP_PREVIOUS,
                              description="0: the current run; n: the n-th run before it"),
        authorization: str | None = Header(default=None),
    ) -> StreamingResponse:
        if not node_auth.server_may_call(server_key(), authorization):
            raise HTTPException(401, f"node {node.name}'s logs answer the gpufleet server's credential only",
                                headers={"WWW-Authenticate": "Bearer"})
        path = find_log(node, instance_id)
        if path is None:
            raise HTTPException(404, f"no log for instance {instance_id} on worker {node.name}")
        if previous:
            path = run_logs.previous_path(path, previous)
            if not path.exists():
                raise HTTPException(404, f"no log of run -{previous} of instance {instance_id} on worker {node.name} "
                                         f"(it has not been restarted {previous} time(s) there)")
            return StreamingResponse(read_log(path, tail, follow=False), media_type="text/plain")

        def backend_registered() -> bool:
            return registry.get(instance_id) is not None

        # Follow while the backend is registered here; stop once it has been removed.
        stream = read_log(path, tail, follow, keep_going=backend_registered)
        return StreamingResponse(stream, media_type="text/plain")

    return app

