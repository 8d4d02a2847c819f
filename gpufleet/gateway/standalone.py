"""A ``gpufleet gateway`` process: the gateway's routes, ``/metrics`` and ``/health``, its routing
table read from the gpufleet server's API. It keeps no state but its in-flight counts, so
any number of them can run behind a plain TCP load balancer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gpufleet.gateway.metrics import GatewayMetrics
from gpufleet.gateway.remote_auth import RemoteAuthenticator, RemoteAuthMiddleware
from gpufleet.gateway.routes import Gateway
from gpufleet.gateway.settings import GatewaySettings
from gpufleet.gateway.sources import ApiSource
from gpufleet.gateway.table import RoutingCache


def create_gateway_app(server_url: str, settings: GatewaySettings | None = None,
                       headers: dict[str, str] | None = None) -> Starlette:
    """``headers``: sent with every table read (an admin or operator key of the server). Callers
    are authenticated by the server (gpufleet.gateway.remote_auth): every path but ``/health``
    needs a key the server accepts, as on the server itself."""
    settings = settings or GatewaySettings.from_env()
    registry = CollectorRegistry()
    source = ApiSource(server_url, headers)
    authenticator = RemoteAuthenticator(server_url)
    gateway = Gateway(RoutingCache(source, settings.refresh_s), settings, GatewayMetrics(registry))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def health(_: Request) -> Response:
        """200 once the server's table could be read (a load balancer's readiness check)."""
        try:
            table = await gateway.cache.table()
        except Exception as exc:  # noqa: BLE001 - the health answer says what failed
            return JSONResponse({"status": "error", "detail": f"cannot read the routing table: {exc}"}, 503)
        return JSONResponse({"status": "ok", "deployments": len(table.routes)})

    async def close() -> None:
        await gateway.close()
        await source.close()
        await authenticator.close()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await close()

    app = Starlette(routes=[*gateway.routes(), Route("/metrics", metrics), Route("/health", health)],
                    lifespan=lifespan, middleware=[Middleware(RemoteAuthMiddleware, authenticator=authenticator)])
    app.state.gateway = gateway
    app.state.authenticator = authenticator
    app.state.close = close  # for gpufleet.gateway.front, which runs no lifespan
    return app
