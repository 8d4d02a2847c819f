"""The gateway: the steps of passing a request on (admit the caller, choose a replica, wait for
one, count what failed, account for the answer), and its HTTP handlers on any Starlette app —
the gpufleet server's (add_gateway) or a ``gpufleet gateway`` process's
(gpufleet.gateway.standalone). A gateway process's own HTTP server runs the same steps from
protocol callbacks instead (gpufleet.gateway.exchange).

Plain Starlette routes, not FastAPI ones: the body is passed on as the caller sent it (only
``model`` is read from it), so validating it into a model would cost time for nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpufleet.core.access import ANONYMOUS_ADMIN, Principal
from gpufleet.gateway import errors
from gpufleet.gateway.balancer import LeastOutstanding
from gpufleet.gateway.metrics import UNKNOWN, GatewayMetrics, ReplicaMeters
from gpufleet.gateway.settings import GatewaySettings
from gpufleet.gateway.table import Replica, Route as TableRoute, RoutingCache
from gpufleet.gateway.upstream import (Answer, BrokenAnswer, Unreachable, Upstream, request_headers,
                                      response_headers, usage_of)

log = logging.getLogger(__name__)

#: the OpenAI endpoints a deployment's backend serves, passed on as they are
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank")
#: an unknown model reads the table again at most this often (a burst of typos is one read)
MISS_REFRESH_S = 0.1
#: the end of a stream kept to find its ``usage`` (the last event carries it)
STREAM_TAIL_BYTES = 8192
#: a replica that disconnected before answering is tried once more (a pooled connection the
#: backend had closed looks the same); one that refused the connection is not
DISCONNECT_TRIES = 2


def principal_of(request: Request) -> Principal:
    """The authenticated caller, set by the authentication middleware; without one
    (authentication off), the anonymous admin."""
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else ANONYMOUS_ADMIN


class Gateway:
    """One per app: the routing table's cache, the balancer, the backend connections and the
    metrics that every request shares."""

    def __init__(self, cache: RoutingCache, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.cache = cache
        self.settings = settings
        self.metrics = metrics
        self.balancer = LeastOutstanding()
        self.upstream = Upstream(settings.request_timeout_s, settings.connect_timeout_s)

    def routes(self) -> list[Route]:
        handlers = [Route(path, self._endpoint(path), methods=["POST"]) for path in ENDPOINTS]
        return [*handlers, Route("/v1/models", self.list_models, methods=["GET"])]

    def _endpoint(self, path: str):  # noqa: ANN202 - a Starlette endpoint
        async def endpoint(request: Request) -> Response:
            try:
                return await self.proxy(request, path)
            except errors.GatewayError as exc:
                return exc.response()
        endpoint.__name__ = "gateway_" + path.rsplit("/", 1)[1]
        return endpoint

    # ------------------------------------------------------------------ /v1/models

    async def list_models(self, request: Request) -> Response:
        principal = principal_of(request)
        table = await self.cache.table()
        data = [{"id": r.deployment, "object": "model", "created": r.created, "owned_by": "gpufleet",
                 "replicas": r.replicas_desired, "ready_replicas": len(r.replicas)}
                for r in table.routes.values() if not r.deleting and principal.may_infer(r.deployment)]
        return JSONResponse({"object": "list", "data": data})

    # ------------------------------------------------------------------ the proxy

    async def proxy(self, request: Request, path: str) -> Response:
        started = time.perf_counter()
        return await self.forward(principal_of(request), path, request.url.query, await request.body(),
                                  request_headers(request.headers), started)

    async def forward(self, principal: Principal, path: str, query: str, body: bytes, headers: dict[str, str],
                      started: float | None = None) -> Response:
        """Pass one request on to a replica of the deployment its body names; the answer to give
        the caller (a streamed one is relayed as it is read). ``headers``: those the backend may
        see (upstream.FORWARD_REQUEST_HEADERS). Raises :class:`errors.GatewayError` for the
        gateway's own answers."""
        started = time.perf_counter() if started is None else started
        model = self.admit(principal, body)
        url_tail = path + (f"?{query}" if query else "")
        failures: dict[int, int] = {}
        deadline = time.monotonic() + self.settings.wait_s
        while True:
            replica = await self.replica_for(model, failures, deadline)
            try:
                return await self._send(replica, path, url_tail, body, headers, started)
            except Unreachable as exc:
                self.unreachable(replica, exc, failures)

    # -- the steps, shared with gpufleet.gateway.exchange (the front's callback-driven pass-on)

    def admit(self, principal: Principal, body: bytes) -> str:
        """The deployment the body names, if this caller may use it. Raises
        :class:`errors.GatewayError` (400 no model, 403 not in the key's scope)."""
        model = _model_of(body)
        if not principal.may_infer(model):
            table = self.cache.current
            known = table is not None and model in table.routes  # labels never take the caller's words
            self.count_error(model if known else UNKNOWN, "model_not_allowed")
            raise errors.forbidden(model)
        return model

    def replica_now(self, model: str, failures: dict[int, int]) -> Replica | None:
        """The replica to send to, if one can be chosen without waiting (a fresh table, a ready
        replica not given up on); None: :meth:`replica_for` must be awaited."""
        table = self.cache.fresh()
        route = table.routes.get(model) if table is not None else None
        if route is None or route.deleting:
            return None
        return self.balancer.pick(_candidates(route, failures))

    async def replica_for(self, model: str, failures: dict[int, int], deadline: float) -> Replica:
        """The replica to send to, waiting until ``deadline`` (monotonic) for one to come up.
        Raises :class:`errors.GatewayError` (404 unknown model, 503 none came up)."""
        while True:
            route = await self._route(model)
            replica = self.balancer.pick(_candidates(route, failures))
            if replica is not None:
                return replica
            await self._wait(route, deadline, tried=bool(failures))

    def unreachable(self, replica: Replica, exc: Unreachable, failures: dict[int, int]) -> None:
        """``replica`` failed before a byte of its answer: count it, so that it is tried again
        at most once (a disconnect) or not at all (refused, connect timeout)."""
        failures[replica.instance] = failures.get(replica.instance, 0) + (
            1 if exc.reason == "disconnected" else DISCONNECT_TRIES)
        self.metrics.retry(replica.deployment, exc.reason)
        log.warning("replica %s of %s at %s: %s (%s); trying another", replica.name, replica.deployment,
                    replica.url, exc.reason, exc)

    def begin(self, replica: Replica, started: float) -> "_Finish":
        """A request goes to ``replica``: it counts as in flight until the returned finish is called."""
        self.balancer.acquire(replica)
        finish = _Finish(self, replica, self.metrics.of_replica(replica.deployment, replica.name), started)
        finish.meters.in_flight += 1
        return finish

    def headed(self, replica: Replica, path: str, status: int) -> None:
        """The replica's answer began with ``status``."""
        self.metrics.answered(replica.deployment, replica.name, path, status)
        if status >= 400:
            self.count_error(replica.deployment, f"upstream_{status}")

    async def _route(self, model: str) -> TableRoute:
        table = await self.cache.table()
        route = table.routes.get(model)
        if route is None or not route.replicas:
            table = await self.cache.refresh(min_age=MISS_REFRESH_S)  # a miss: it may have just changed
            route = table.routes.get(model)
        if route is None or route.deleting:
            self.count_error(UNKNOWN, "model_not_found")
            raise errors.unknown_model(model)
        return route

    async def _wait(self, route: TableRoute, deadline: float, tried: bool) -> None:
        """No replica to send to: wait for one to come up (a deployment starting or restarting
        must not fail its first callers), polling the table, up to the configured time."""
        model = route.deployment
        if route.replicas_desired == 0:
            self.count_error(model, "no_replica")
            raise errors.no_replica(model, "it is scaled to 0 replicas (gpufleet start or scale brings it back)")
        if time.monotonic() >= deadline:
            self.count_error(model, "no_replica")
            why = ("every ready replica failed to answer" if tried else
                   f"none of its {route.replicas_desired} replica(s) is RUNNING")
            raise errors.no_replica(model, f"{why} (waited {self.settings.wait_s:g} s)")
        await self.cache.refresh(min_age=self.settings.poll_s)  # one read per poll interval, shared

    async def _send(self, replica: Replica, path: str, url_tail: str, body: bytes, headers: dict[str, str],
                    started: float) -> Response:
        model, name = replica.deployment, replica.name
        done = self.begin(replica, started)
        try:
            upstream = await self.upstream.open(replica.url + url_tail, body, headers)
        except BaseException as exc:
            done.abandon()
            if isinstance(exc, TimeoutError):
                self.count_error(model, "upstream_timeout")
                raise errors.upstream_timeout(model, name, self.upstream.request_timeout_s) from None
            raise
        status = upstream.status
        self.headed(replica, path, status)
        if upstream.content_type == "text/event-stream":
            return StreamingResponse(_relay(upstream, done), status_code=status,
                                     headers=response_headers(upstream))
        try:
            content = await upstream.read()
        except (BrokenAnswer, TimeoutError) as exc:
            upstream.close()
            done(None, failed=True)
            if isinstance(exc, TimeoutError):
                self.count_error(model, "upstream_timeout")
                raise errors.upstream_timeout(model, name, self.upstream.request_timeout_s) from None
            self.count_error(model, "upstream_cut")
            raise errors.upstream_failed(model, f"replica {name} broke off its answer: {exc}") from exc
        except BaseException:
            upstream.close()
            done(None, failed=True)
            raise
        upstream.release()
        done(usage_of(content) if status < 300 else None)
        return Response(content, status_code=status, headers=response_headers(upstream))

    def count_error(self, deployment: str, code: str) -> None:
        self.metrics.error(deployment, code)

    async def close(self) -> None:
        await self.upstream.close()


class _Finish:
    """Once per request, when its answer has been passed on in full (or broke off): the
    balancer and the metrics learn it."""

    __slots__ = ("gateway", "replica", "meters", "started", "first_byte")

    def __init__(self, gateway: Gateway, replica: Replica, meters: ReplicaMeters, started: float) -> None:
        self.gateway, self.replica, self.meters, self.started = gateway, replica, meters, started
        self.first_byte: float | None = None

    def first(self) -> None:
        self.first_byte = time.perf_counter()
        self.meters.ttft.observe(self.first_byte - self.started)

    def abandon(self) -> None:
        """The request never got an answer begun (the replica failed first): not a latency."""
        self.gateway.balancer.release(self.replica)
        self.meters.in_flight -= 1

    def __call__(self, usage: dict[str, Any] | None, failed: bool = False) -> None:
        self.abandon()
        self.meters.latency.observe(time.perf_counter() - self.started)
        if usage:
            self.gateway.metrics.usage(self.replica.deployment, usage)


async def _relay(upstream: Answer, done: _Finish) -> AsyncIterator[bytes]:
    """Pass a streamed answer on chunk by chunk, as the backend writes it (no buffering)."""
    tail = b""
    complete = False
    try:
        async for chunk in upstream.chunks():
            if done.first_byte is None:
                done.first()
            tail = (tail + chunk)[-STREAM_TAIL_BYTES:]
            yield chunk
        complete = True
    except (BrokenAnswer, TimeoutError) as exc:
        r = done.replica
        code = "upstream_timeout" if isinstance(exc, TimeoutError) else "upstream_cut"
        done.gateway.count_error(r.deployment, code)
        log.warning("stream from replica %s of %s broke off: %s", r.name, r.deployment, exc or type(exc).__name__)
    finally:
        if complete:
            upstream.release()
        else:
            upstream.close()  # the caller left or the backend broke off: this connection is not reused
        done(usage_of(tail) if complete else None, failed=not complete)


def _candidates(route: TableRoute, failures: dict[int, int]) -> tuple[Replica, ...] | list[Replica]:
    """The route's ready replicas, less those given up on for this request."""
    if not failures:
        return route.replicas
    return [r for r in route.replicas if failures.get(r.instance, 0) < DISCONNECT_TRIES]


def _model_of(body: bytes) -> str:
    try:
        payload = json.loads(body.decode())  # UTF-8 (RFC 8259); a str skips json's encoding detection
    except ValueError as exc:
        raise errors.bad_request(f"the body must be a JSON object: {exc}") from None
    if not isinstance(payload, dict):
        raise errors.bad_request("the body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise errors.bad_request('"model" is required: the name of a deployment (GET /v1/models lists them)')
    return model
