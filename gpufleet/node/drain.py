"""Drain a backend before it is stopped: wait until it has no request in progress, up to a grace.

By the time a stop runs, the instance is marked for removal (``deleting``), so gateways stop
sending it new requests within one routing-table refresh (gpufleet.gateway.table). What is
left is the requests already sent. Whether any are in progress is asked of the backend
itself, not of the gateways: it is the one place that knows, however many gateway processes
there are and whether a caller went to the backend's port directly; and it needs no new
state in the server. Each engine says it its own way:

- llama.cpp: ``GET /slots`` lists the slots, ``is_processing`` on each (on by default);
- vLLM: ``GET /metrics`` has ``vllm:num_requests_running`` and ``vllm:num_requests_waiting``.

A backend that answers neither (another engine, slots turned off) cannot be watched: the
drain waits the settle time only and says so in the log. One that refuses the connection
serves nothing, and is stopped at once.

Knobs: ``GPUFLEET_DRAIN_GRACE_S`` (default 30): the longest a stop waits for requests in
progress; ``GPUFLEET_DRAIN_SETTLE_S`` (default 2): how long a stop waits at least, so that
every gateway has re-read its table (1 s by default) and a request routed from an old table
has reached the backend before it is looked at; 0 for either turns that part off.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from gpufleet.settings import env_number

if TYPE_CHECKING:
    from gpufleet.node.context import NodeContext

log = logging.getLogger(__name__)

#: how often a draining backend is asked again
POLL_S = 0.25
#: idle answers in a row that count as drained (a request queued behind a finishing one
#: shows as processing only once a slot takes it)
IDLE_IN_A_ROW = 2
_VLLM_BUSY = re.compile(rb"^vllm:num_requests_(?:running|waiting)(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.MULTILINE)


def grace_s() -> float:
    return env_number("GPUFLEET_DRAIN_GRACE_S", 30.0, positive=False)


def settle_s() -> float:
    return env_number("GPUFLEET_DRAIN_SETTLE_S", 2.0, positive=False)


@dataclass(frozen=True)
class Drained:
    """How a drain ended: ``idle`` (nothing in progress), ``gone`` (the backend does not
    answer), ``unknown`` (it cannot say; waited the settle time) or ``grace`` (still busy
    when the grace ran out)."""

    outcome: str
    waited_s: float


def in_progress(base_url: str, client: httpx.Client) -> int | None:
    """Requests the backend is working on now; None when it cannot tell. Raises
    ``httpx.ConnectError`` when nothing listens."""
    try:
        slots = client.get(f"{base_url}/slots")
        if slots.status_code == 200:
            body = slots.json()
            if isinstance(body, list):
                return sum(1 for slot in body if isinstance(slot, dict) and slot.get("is_processing"))
        metrics = client.get(f"{base_url}/metrics")
        if metrics.status_code == 200:
            return vllm_busy(metrics.content)
    except httpx.ConnectError:
        raise
    except (httpx.HTTPError, ValueError):
        return None
    return None


def vllm_busy(metrics: bytes) -> int | None:
    """Requests running or waiting in vLLM's Prometheus text (every model it serves); None
    when the text has neither gauge (not vLLM)."""
    values = _VLLM_BUSY.findall(metrics)
    return int(sum(float(v) for v in values)) if values else None


def drain(base_url: str, grace: float | None = None, settle: float | None = None,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Drained:
    """Wait until the backend at ``base_url`` has nothing in progress (twice in a row), at
    least ``settle`` and at most ``grace`` seconds."""
    grace = grace_s() if grace is None else grace
    settle = settle_s() if settle is None else settle
    started = clock()
    idle = 0
    with httpx.Client(timeout=2.0) as client:
        while True:
            waited = clock() - started
            try:
                busy = in_progress(base_url, client)
            except httpx.ConnectError:
                return Drained("gone", waited)
            if busy is None:
                sleep(max(0.0, settle - waited))
                log.info("%s cannot say what it is working on; stopping it after %.1f s", base_url, settle)
                return Drained("unknown", clock() - started)
            idle = idle + 1 if busy == 0 else 0
            if idle >= IDLE_IN_A_ROW and waited >= settle:
                return Drained("idle", waited)
            if waited >= max(grace, settle):
                log.warning("%s still has %d request(s) in progress after the %.0f s drain grace; stopping it",
                            base_url, busy, grace)
                return Drained("grace", waited)
            sleep(POLL_S)


def drain_instance(instance_id: int, node: "NodeContext") -> Drained | None:
    """Drain this node's backend of the instance (its llama-server, vLLM …; RPC servers serve no
    requests of their own). None when this node runs no backend for it."""
    from gpufleet.node.backends import registry

    record = next((r for r in registry(node).of_instance(instance_id) if r.role == "server"), None)
    if record is None:
        return None
    host = node.bind_host if node.bind_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return drain(f"http://{host}:{record.port}")
