"""Liveness probes of running backends: a backend whose process lives but no longer answers
(hung, stopped with SIGSTOP, deadlocked) is as failed as one that exited.

Only backends that once answered their health path are probed (the start-up is bounded by
the health check's own timeout), every PROBE_INTERVAL_S; PROBE_FAILURES failures in a row
(a timeout, a refused connection, a 5xx) make the agent report the instance ERROR and stop
the backend, so the plan restarts it like a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from gpufleet.node.registry import BackendRecord
from gpufleet.settings import env_number


PROBE_INTERVAL_S = env_number("GPUFLEET_PROBE_INTERVAL", 5.0, positive=True)
PROBE_FAILURES = int(env_number("GPUFLEET_PROBE_FAILURES", 3, positive=True))
PROBE_TIMEOUT_S = env_number("GPUFLEET_PROBE_TIMEOUT", 2.0, positive=True)


def probe(record: BackendRecord, host: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the backend answers its healthy path with 200; else what went wrong."""
    url = f"http://{host}:{record.port}{record.healthy_path}"
    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.TimeoutException:
        return f"no answer within {timeout:g} s"
    except httpx.TransportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if resp.status_code == 200 else f"HTTP {resp.status_code}"


@dataclass
class Prober:
    """Consecutive probe failures per backend (by record key and pid: a relaunch starts over)."""

    failures: int = PROBE_FAILURES
    _failed: dict[tuple[str, int], list[str]] = field(default_factory=dict)

    def observe(self, record: BackendRecord, problem: str | None) -> list[str] | None:
        """Record one probe's outcome; the problems once ``failures`` happened in a row."""
        key = (record.key, record.pid)
        if problem is None:
            self._failed.pop(key, None)
            return None
        seen = self._failed.setdefault(key, [])
        seen.append(problem)
        return list(seen) if len(seen) >= self.failures else None

    def forget(self, live: set[tuple[str, int]]) -> None:
        for key in set(self._failed) - live:
            del self._failed[key]
