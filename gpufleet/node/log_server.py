"""The node agent's small HTTP API: backend logs, read where they are written.

The logs answer only the server's credential for this node (given at join, docs/auth.md):
backend logs hold prompts and paths. ``/v1/health`` and ``/v1/poke`` (poll Prefect now; it
reads nothing and starts nothing Prefect has not scheduled) stay open."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import StreamingResponse

from gpufleet.node import node_auth, run_logs
from gpufleet.node.context import NodeContext
from gpufleet.node.logs import read_log
from gpufleet.node.registry import BackendRegistry


#: ``<id>-<name>.rpc<gpu>.log``: an RPC server's log, one per GPU of a part worker
_RPC_LOG = re.compile(r"\.rpc(\d+)\.log$")


def find_log(node: NodeContext, instance_id: int) -> Path | None:
    """The main backend's log of an instance on this node (not its RPC servers')."""
    matches = sorted(p for p in node.logs_dir.glob(f"{instance_id}-*.log") if not _RPC_LOG.search(p.name))
    return matches[-1] if matches else None


def find_rpc_logs(node: NodeContext, instance_id: int) -> dict[int, Path]:
    """GPU index -> the log of the RPC server this node runs for a distributed instance."""
    found = {}
    for p in node.logs_dir.glob(f"{instance_id}-*.rpc*.log"):
        if (m := _RPC_LOG.search(p.name)) is not None:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _rpc_stream(node: NodeContext, instance_id: int, gpu: int | None, tail: int | None, follow: bool,
                previous: int, keep_going: Callable[[], bool]) -> Iterator[str]:
    """The part's rpc-server log(s): one GPU's, or each GPU's in turn under a heading."""
    logs = find_rpc_logs(node, instance_id)
    if gpu is not None:
        logs = {gpu: logs[gpu]} if gpu in logs else {}
    if not logs:
        which = f" for GPU {gpu}" if gpu is not None else ""
        raise HTTPException(404, f"no RPC server log of instance {instance_id}{which} on worker {node.name}")
    if follow and len(logs) > 1:
        raise HTTPException(400, f"worker {node.name} runs {len(logs)} RPC servers for instance {instance_id} "
                                 f"(GPUs {', '.join(map(str, logs))}): follow one with gpu=N")
    paths = {g: run_logs.previous_path(p, previous) if previous else p for g, p in logs.items()}
    missing = [g for g, p in paths.items() if not p.exists()]
    if missing:
        raise HTTPException(404, f"no log of run -{previous} of the RPC server(s) of instance {instance_id} "
                                 f"on worker {node.name}")

    def stream() -> Iterator[str]:
        for g, path in paths.items():
            if len(paths) > 1:
                yield f"==> rpc-server for GPU {g} on {node.name} <==\n"
            yield from read_log(path, tail, follow and not previous, keep_going=keep_going)

    return stream()


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
        rpc: bool = Query(default=False, description="the RPC servers' logs this node runs for a distributed "
                                                     "instance, not its main backend's"),
        gpu: int | None = Query(default=None, ge=0, description="with rpc: the RPC server of this GPU only"),
    ) -> StreamingResponse:
        if not node_auth.server_may_call(server_key(), authorization):
            raise HTTPException(401, f"node {node.name}'s logs answer the gpufleet server's credential only",
                                headers={"WWW-Authenticate": "Bearer"})
        if rpc:
            def alive() -> bool:  # follow while this node still runs an RPC server for it
                return any(r.role == "rpc" for r in registry.of_instance(instance_id))

            return StreamingResponse(_rpc_stream(node, instance_id, gpu, tail, follow, previous, alive),
                                     media_type="text/plain")
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

