"""Prometheus metrics of the gpufleet server at ``GET /metrics``.

``gpufleet_http_requests_total{method, route, status}`` counts every request by its route
template (``/v1/instances/{instance_id}``, never the id itself, so the series stay few). It is
how the deploy benchmark counts what each operation costs the server, and how an operator sees
which callers load it. Each app has its own registry (``app.state.metrics_registry``): tests
run several apps in one process.

The counter is a plain ASGI middleware that reads the matched route from the request's scope
after the app handled it, and remembers each endpoint's template: a request costs a dictionary
lookup, not a walk over every route (the gateway's routes are on the hot path).

The cluster's state — instances by state, restarts, GPU memory claimed vs total, instances
waiting for a placement — is read from the database at scrape time by
:class:`gpufleet.server.cluster_metrics.ClusterCollector` (three small queries per scrape).
The gateway's own metrics are in gpufleet.gateway.metrics.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpufleet.server.cluster_metrics import ClusterCollector


class _CountRequests:
    """Count each HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, counter: Counter, fastapi_app: FastAPI) -> None:
        self.app = app
        self.counter = counter
        self.fastapi_app = fastapi_app
        self.templates: dict[Any, str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            self.counter.labels(scope["method"], self._route(scope), str(status)).inc()

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")  # FastAPI's routes put themselves here
        if route is not None:
            return getattr(route, "path", "other")
        endpoint = scope.get("endpoint")  # plain Starlette routes (the gateway's) put their endpoint
        if endpoint is None:
            return "unmatched"
        template = self.templates.get(endpoint)
        if template is None:
            template = self.templates[endpoint] = self._template(scope)
        return template

    def _template(self, scope: Scope) -> str:
        for route in self.fastapi_app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return "other"


def add_metrics(app: FastAPI) -> CollectorRegistry:
    registry = CollectorRegistry()
    requests = Counter("gpufleet_http_requests", "HTTP requests served, by route template",
                       ["method", "route", "status"], registry=registry)
    app.add_middleware(_CountRequests, counter=requests, fastapi_app=app)
    server_state = getattr(app.state, "gpufleet", None)
    if server_state is not None:
        registry.register(ClusterCollector(server_state.session))
    app.state.metrics_registry = registry

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return registry
