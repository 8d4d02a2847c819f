"""Where a routing table comes from: the database (inside the gpufleet server) or the server's
``GET /v1/gateway/routes`` (a ``gpufleet gateway`` process, which has no database).

Both are one cheap read of the whole table (two small queries, or one request), made by the
cache (gpufleet.gateway.table) once per refresh interval, never per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy import select
from sqlalchemy.orm import Session

from gpufleet.core.states import InstanceState
from gpufleet.gateway.table import Replica, Route, RouteTable, TableSource
from gpufleet.store.models import DeploymentRow, InstanceRow, WorkerRow

#: the server route a gateway process reads its table from
ROUTES_PATH = "/v1/gateway/routes"


def backend_url(worker_address: str, port: int) -> str:
    """The backend listens on its worker's host (the address the node registered) at its own port."""
    host = urlsplit(worker_address).hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def read_table(session: Session) -> RouteTable:
    """Deployments, and the replicas that take new requests: RUNNING, not marked for removal
    (a replica being drained is left out), with a port on a registered worker."""
    deployments = session.execute(
        select(DeploymentRow.id, DeploymentRow.name, DeploymentRow.replicas, DeploymentRow.deleting,
               DeploymentRow.created_at)).all()
    ready: dict[int, list[Replica]] = {}
    rows = session.execute(
        select(InstanceRow.id, InstanceRow.name, InstanceRow.deployment_id, InstanceRow.worker_name,
               InstanceRow.port, WorkerRow.address)
        .join(WorkerRow, InstanceRow.worker_name == WorkerRow.name)
        .where(InstanceRow.state == InstanceState.RUNNING.value, InstanceRow.deleting.is_(False),
               InstanceRow.port.is_not(None))
        .order_by(InstanceRow.id)).all()
    names = {d.id: d.name for d in deployments}
    for iid, name, dep_id, worker, port, address in rows:
        if dep_id in names:
            ready.setdefault(dep_id, []).append(
                Replica(instance=iid, name=name, deployment=names[dep_id], worker=worker,
                        url=backend_url(address, port)))
    return RouteTable({d.name: Route(deployment=d.name, replicas_desired=d.replicas, deleting=d.deleting,
                                     created=int(d.created_at.timestamp()) if d.created_at else 0,
                                     replicas=tuple(ready.get(d.id, ())))
                       for d in deployments})


def database_source(session: Callable[[], AbstractContextManager[Session]]) -> TableSource:
    """The server's own source: the table read in a thread (the database driver blocks)."""
    def read() -> RouteTable:
        with session() as s:
            return read_table(s)

    async def source(fresh: bool) -> RouteTable:
        return await asyncio.to_thread(read)  # the database is always fresh
    return source


class ApiSource:
    """A gateway process's source: the server's routes endpoint, over one pooled connection."""

    def __init__(self, server_url: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> None:
        self.url = server_url.rstrip("/") + ROUTES_PATH
        self._headers = headers or {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, fresh: bool) -> RouteTable:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        async with self._session.get(self.url, params={"fresh": "true"} if fresh else None) as response:
            if response.status != 200:
                raise RuntimeError(f"{self.url} answered {response.status}: {(await response.text())[:300]}")
            return RouteTable.from_json(await response.json())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
