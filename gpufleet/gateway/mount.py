"""The gateway inside the gpufleet server: its routes on the server's app, its table read from
the database, its metrics in the server's registry, and ``GET /v1/gateway/routes`` for
``gpufleet gateway`` processes (which read their table from it instead of the database)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gpufleet.gateway.metrics import GatewayMetrics
from gpufleet.gateway.routes import MISS_REFRESH_S, Gateway
from gpufleet.gateway.settings import GatewaySettings
from gpufleet.gateway.sources import ROUTES_PATH, database_source
from gpufleet.gateway.table import RoutingCache

log = logging.getLogger(__name__)


def add_gateway(app: FastAPI, state: Any, settings: GatewaySettings | None = None) -> Gateway:
    """Mount the gateway on the server's app (before the web page's catch-all mount).
    ``state``: the ServerState (its ``session()`` reads the database)."""
    settings = settings or GatewaySettings.from_env()
    registry = getattr(app.state, "metrics_registry", None) or CollectorRegistry()
    gateway = Gateway(RoutingCache(database_source(state.session), settings.refresh_s), settings,
                      GatewayMetrics(registry))

    async def routes(request: Request) -> Response:
        """The routing table for gateway processes, from the same cache the server routes with:
        any number of gateways polling it cost the database one read per interval. ``fresh``
        (a gateway's miss): a table read after this request, at most ten reads a second."""
        if request.query_params.get("fresh") == "true":
            table = await gateway.cache.refresh(min_age=MISS_REFRESH_S)
        else:
            table = await gateway.cache.table()
        return JSONResponse(table.to_json())

    app.router.routes.extend([*gateway.routes(), Route(ROUTES_PATH, routes, methods=["GET"])])
    _close_on_shutdown(app, gateway)
    app.state.gateway = gateway
    return gateway


def _close_on_shutdown(app: FastAPI, gateway: Gateway) -> None:
    """Close the pooled backend connections after the app's own lifespan ends."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as value:
            yield value
        await gateway.close()

    app.router.lifespan_context = lifespan
