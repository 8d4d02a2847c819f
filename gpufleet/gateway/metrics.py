"""What the gateway tells Prometheus: requests, errors, latency, time to first token, tokens
and in-flight requests, per deployment and replica (the replica's instance name).

Label values come from the routing table, never from the caller: a request for a model that
does not exist is counted under ``deployment="(unknown)"``, so a client cannot grow the
number of series.

Why not prometheus_client's Counter and Histogram objects: each ``inc`` takes a lock and each
``labels()`` builds a key, and a request made seven of them — a sixth of what a request cost
the front (benchmarks/gateway_overhead.py). Requests are counted on the event loop that
serves them, in plain dictionaries and lists; :meth:`GatewayMetrics.collect` turns them into
the same families when ``/metrics`` is scraped (a custom collector, the way prometheus_client
documents for values kept elsewhere).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            Metric)
from prometheus_client.utils import floatToGoString

UNKNOWN = "(unknown)"
#: seconds: from a cached 5 ms answer to a 10-minute generation
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BOUNDS = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]

_DOCS = {
    "requests": "Requests the gateway sent to a replica, by the replica's answer",
    "errors": "Requests that failed: the gateway's own answers (code: no_replica, model_not_found, upstream_timeout, "
              "model_not_allowed, ...), upstream error statuses (upstream_<status>) and streams cut mid-way",
    "latency": "From the request's arrival to its answer's last byte",
    "ttft": "Streamed answers: from the request's arrival to the first byte of the body",
    "tokens": "Tokens as the backend reports them in `usage` (kind: prompt, completion)",
    "in_flight": "Requests sent to a replica and not yet answered in full",
    "retries": "Requests sent again to another replica (reason: refused, disconnected, connect_timeout)",
}


class Histogram:
    """Counts per :data:`LATENCY_BUCKETS` bucket (the last: above them all) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le is inclusive: bisect_left
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        total, out = 0, []
        for bound, count in zip(_BOUNDS, self.counts):
            total += count
            out.append((bound, float(total)))
        return out


class ReplicaMeters:
    """One replica's in-flight count, latency and time-to-first-token histograms."""

    __slots__ = ("in_flight", "latency", "ttft")

    def __init__(self) -> None:
        self.in_flight = 0
        self.latency = Histogram()
        self.ttft = Histogram()


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests: dict[tuple[str, str, str, int], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._retries: dict[tuple[str, str], int] = {}
        self._replicas: dict[tuple[str, str], ReplicaMeters] = {}
        registry.register(self)

    # -- counting, on the event loop

    def of_replica(self, deployment: str, replica: str) -> ReplicaMeters:
        key = (deployment, replica)
        meters = self._replicas.get(key)
        if meters is None:
            meters = self._replicas[key] = ReplicaMeters()
        return meters

    def answered(self, deployment: str, replica: str, endpoint: str, status: int) -> None:
        key = (deployment, replica, endpoint, status)
        self._requests[key] = self._requests.get(key, 0) + 1

    def error(self, deployment: str, code: str) -> None:
        _add(self._errors, (deployment, code), 1)

    def retry(self, deployment: str, reason: str) -> None:
        _add(self._retries, (deployment, reason), 1)

    def usage(self, deployment: str, usage: dict[str, object]) -> None:
        """Tokens as an answer's ``usage`` reports them (prompt_tokens, completion_tokens)."""
        for kind, key in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
            value = usage.get(key)
            if isinstance(value, int) and value > 0:
                _add(self._tokens, (deployment, kind), value)

    # -- scraping (prometheus_client's collector protocol)

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("gpufleet_gateway_requests", _DOCS["requests"],
                                       labels=["deployment", "replica", "endpoint", "status"])
        for (deployment, replica, endpoint, status), n in list(self._requests.items()):
            requests.add_metric([deployment, replica, endpoint, str(status)], n)
        yield requests
        yield _counter("gpufleet_gateway_errors", "errors", ["deployment", "code"], self._errors)
        yield _counter("gpufleet_gateway_tokens", "tokens", ["deployment", "kind"], self._tokens)
        yield _counter("gpufleet_gateway_retries", "retries", ["deployment", "reason"], self._retries)
        replicas = list(self._replicas.items())
        labels = ["deployment", "replica"]
        in_flight = GaugeMetricFamily("gpufleet_gateway_in_flight_requests", _DOCS["in_flight"], labels=labels)
        latency = HistogramMetricFamily("gpufleet_gateway_request_duration_seconds", _DOCS["latency"], labels=labels)
        ttft = HistogramMetricFamily("gpufleet_gateway_time_to_first_token_seconds", _DOCS["ttft"], labels=labels)
        for key, meters in replicas:
            in_flight.add_metric(list(key), meters.in_flight)
            latency.add_metric(list(key), meters.latency.cumulative(), meters.latency.sum)
            ttft.add_metric(list(key), meters.ttft.cumulative(), meters.ttft.sum)
        yield from (latency, ttft, in_flight)


def _add(counts: dict[tuple[str, str], int], key: tuple[str, str], n: int) -> None:
    counts[key] = counts.get(key, 0) + n


def _counter(name: str, doc: str, labels: list[str], counts: dict[tuple[str, str], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, _DOCS[doc], labels=labels)
    for key, n in list(counts.items()):
        family.add_metric(list(key), n)
    return family
