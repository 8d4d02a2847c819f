"""Prometheus metrics of the gpufleet server at ``GET /metrics``.

``gpufleet_http_requests_total{method, route, status}`` counts every request by its route
template (``/v1/instances/{instance_id}``, never the id itself, so the series stay few). It is
how the deploy benchmark counts what each operation costs the server, and how an operator sees
which callers load it. Each app has its own registry: tests run several apps in one process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.routing import Match


def add_metrics(app: FastAPI) -> CollectorRegistry:
    registry = CollectorRegistry()
    requests = Counter("gpufleet_http_requests", "HTTP requests served, by route template",
                       ["method", "route", "status"], registry=registry)

    def route_of(request: Request) -> str:
        for route in app.router.routes:
            match, _ = route.matches(request.scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return "unmatched"

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        requests.labels(request.method, route_of(request), str(response.status_code)).inc()
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
