"""What the gateway tells Prometheus: requests, errors, latency, time to first token, tokens
and in-flight requests, per deployment and replica (the replica's instance name).

Label values come from the routing table, never from the caller: a request for a model that
does not exist is counted under ``deployment="(unknown)"``, so a client cannot grow the
number of series. Each observation is a dictionary lookup and an add, a few microseconds.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNKNOWN = "(unknown)"
#: seconds: from a cached 5 ms answer to a 10-minute generation
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gpufleet_gateway_requests", "Requests the gateway sent to a replica, by the replica's answer",
            ["deployment", "replica", "endpoint", "status"], registry=registry)
        self.errors = Counter(
            "gpufleet_gateway_errors",
            "Requests that failed: the gateway's own answers (code: no_replica, model_not_found, upstream_timeout, "
            "model_not_allowed, ...), upstream error statuses (upstream_<status>) and streams cut mid-way",
            ["deployment", "code"], registry=registry)
        self.latency = Histogram(
            "gpufleet_gateway_request_duration_seconds", "From the request's arrival to its answer's last byte",
            ["deployment", "replica"], buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram(
            "gpufleet_gateway_time_to_first_token_seconds",
            "Streamed answers: from the request's arrival to the first byte of the body",
            ["deployment", "replica"], buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter(
            "gpufleet_gateway_tokens", "Tokens as the backend reports them in `usage` (kind: prompt, completion)",
            ["deployment", "kind"], registry=registry)
        self.in_flight = Gauge(
            "gpufleet_gateway_in_flight_requests", "Requests sent to a replica and not yet answered in full",
            ["deployment", "replica"], registry=registry)
        self.retries = Counter(
            "gpufleet_gateway_retries", "Requests sent again to another replica (reason: refused, disconnected, "
            "connect_timeout)", ["deployment", "reason"], registry=registry)

        self._replica: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._status: dict[tuple[str, str, str, int], Any] = {}

    def of_replica(self, deployment: str, replica: str) -> tuple[Any, Any, Any]:
        """(in-flight gauge, latency histogram, time-to-first-token histogram) of one replica,
        looked up once: prometheus_client's ``labels()`` costs microseconds a call."""
        key = (deployment, replica)
        children = self._replica.get(key)
        if children is None:
            children = self._replica[key] = (self.in_flight.labels(deployment, replica),
                                             self.latency.labels(deployment, replica),
                                             self.ttft.labels(deployment, replica))
        return children

    def answered(self, deployment: str, replica: str, endpoint: str, status: int) -> None:
        key = (deployment, replica, endpoint, status)
        child = self._status.get(key)
        if child is None:
            child = self._status[key] = self.requests.labels(deployment, replica, endpoint, str(status))
        child.inc()
