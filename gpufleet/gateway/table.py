"""The routing table (which replicas serve each deployment) and the cache that keeps it fresh.

A table is a snapshot: deployments by name, and for each the replicas that may take new
requests — RUNNING, not being removed (``deleting``), with a port on a known worker. A
replica that is being drained is simply absent, so no new request reaches it while the
ones already sent finish.

The cache reads a table at most once per ``refresh_s`` while requests come (stale-while-
revalidate: a request never waits for a read unless the table is older than three
intervals), and at once on a miss (an unknown deployment or no replica), with concurrent
readers sharing one read. A request therefore costs no database or API query.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replica:
    """A RUNNING instance of a deployment that may take new requests."""

    instance: int
    name: str
    deployment: str
    worker: str
    url: str  # the backend's base URL, e.g. http://10.0.0.5:40123

    def to_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "name": self.name, "deployment": self.deployment,
                "worker": self.worker, "url": self.url}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Replica":
        return cls(instance=int(raw["instance"]), name=str(raw["name"]), deployment=str(raw["deployment"]),
                   worker=str(raw["worker"]), url=str(raw["url"]))


@dataclass(frozen=True)
class Route:
    """One deployment: how many replicas it wants, and the ones that take requests now."""

    deployment: str
    replicas_desired: int
    replicas: tuple[Replica, ...] = ()
    deleting: bool = False
    created: int = 0  # unix seconds, for /v1/models


@dataclass(frozen=True)
class RouteTable:
    routes: dict[str, Route] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"deployments": [
            {"name": r.deployment, "replicas": r.replicas_desired, "deleting": r.deleting, "created": r.created,
             "ready": [x.to_json() for x in r.replicas]} for r in self.routes.values()]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "RouteTable":
        routes = {}
        for d in raw.get("deployments", []):
            routes[d["name"]] = Route(deployment=d["name"], replicas_desired=int(d["replicas"]),
                                      deleting=bool(d.get("deleting", False)), created=int(d.get("created", 0)),
                                      replicas=tuple(Replica.from_json(x) for x in d.get("ready", [])))
        return cls(routes)


#: reads a table; ``fresh``: for a miss, so it must not come from another cache (a gateway process
#: asks the server for a table read after the request, not the server's cached one)
TableSource = Callable[[bool], Awaitable[RouteTable]]


class RoutingCache:
    """The current table, read from ``source`` on an interval and on a miss."""

    def __init__(self, source: TableSource, refresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._refresh_s = refresh_s
        self._clock = clock
        self._table: RouteTable | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Task[RouteTable] | None = None
        self._next_try = float("-inf")  # after a failed read: not before this
        self._failed = False

    @property
    def current(self) -> RouteTable | None:
        """The table requests are routed with now (None before the first read)."""
        return self._table

    @property
    def age(self) -> float:
        return self._clock() - self._read_at

    def fresh(self) -> RouteTable | None:
        """The table to route with now, without waiting: the cached one while fresh, or while
        a read it has just begun is under way; None when :meth:`table` would wait for a read."""
        if self._table is None:
            return None
        age = self.age
        if age < self._refresh_s:
            return self._table
        if age < 3 * self._refresh_s:
            self._start_read(fresh=False)  # serve this request from the cached table; the next gets the new one
            return self._table
        return None

    async def table(self) -> RouteTable:
        """The table to route with: the cached one while fresh; read again when stale."""
        table = self.fresh()
        if table is not None:
            return table
        return await asyncio.shield(self._start_read(fresh=False))

    async def refresh(self, min_age: float = 0.0) -> RouteTable:
        """A table read after this call began (joining a read under way when there is one),
        but no sooner than ``min_age`` after the previous read began: a burst of requests for
        an unknown model costs one read per ``min_age``, not one per request, and a model
        created a moment ago is found."""
        arrived = self._clock()
        wait = self._read_at + min_age - arrived
        if wait > 0:
            await asyncio.sleep(wait)
        table = await asyncio.shield(self._start_read(fresh=True))
        if self._read_at < arrived and not self._failed:  # joined a read that began before us
            table = await asyncio.shield(self._start_read(fresh=True))
        return table

    def _start_read(self, fresh: bool) -> asyncio.Task[RouteTable]:
        reading = self._reading
        if reading is None or (reading.done() and self._clock() >= self._next_try):
            self._reading = asyncio.get_running_loop().create_task(self._read(fresh))
        assert self._reading is not None
        return self._reading

    async def _read(self, fresh: bool) -> RouteTable:
        started = self._clock()
        try:
            table = await self._source(fresh)
        except Exception:
            self._failed = True
            if self._table is None:
                raise
            self._next_try = self._clock() + self._refresh_s
            log.warning("could not read the routing table; routing with the one read %.1f s ago",
                        self.age, exc_info=True)
            return self._table
        self._table, self._read_at, self._failed = table, started, False
        return table
