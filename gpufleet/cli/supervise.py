"""Supervision of `gpufleet up`'s children: a child that dies is restarted, with backoff.

Why: `gpufleet up` is meant to run for days. Before, a node or server that died stopped the
whole cluster (its backends with it) and `up` exited 0. Now the child alone is restarted,
after 1, 2, 4 … s (at most `max_delay`), and each exit and restart is logged with the
child's last log line; backends keep running throughout, since a node that exits without
being asked to stop leaves them running and the restarted node re-adopts them. A child that
exits `max_restarts` times in a row, each time within `stable_after` seconds of its start,
makes `up` give up (GaveUp): it then stops everything and exits non-zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet.cli.embedded import Child


class GaveUp(RuntimeError):
    """A child kept dying; the message names it, its exit code and its log."""


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 1.0
    max_delay: float = 30.0
    #: consecutive quick exits of one child before `up` gives up
    max_restarts: int = 5
    #: a child that ran this long before it exited counts as having recovered
    stable_after: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.max_delay, self.first_delay * 2 ** max(0, failures - 1))


@dataclass
class _Watch:
    child: Child
    started_at: float
    failures: int = 0
    restart_at: float | None = None
    restarts: int = field(default=0)


class Supervisor:
    """Call `check()` periodically (from `up`'s main loop)."""

    def __init__(self, children: list[Child], log: Callable[[str], object],
                 policy: RestartPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or RestartPolicy()
        self.log = log
        self.clock = clock
        now = clock()
        self._watches = [_Watch(c, now) for c in children]

    def restarts(self, name: str) -> int:
        return next(w.restarts for w in self._watches if w.child.name == name)

    def check(self) -> None:
        now = self.clock()
        for w in self._watches:
            if w.restart_at is not None:
                if now >= w.restart_at:
                    w.child.respawn()
                    w.started_at, w.restart_at = now, None
                    w.restarts += 1
                    self.log(f"restarted {w.child.name} (pid {w.child.proc.pid}); log: {w.child.log}")
                continue
            code = w.child.proc.poll()
            if code is None:
                continue
            ran = now - w.started_at
            w.failures = 1 if ran >= self.policy.stable_after else w.failures + 1
            last = w.child.last_log_line()
            said = f"; its last log line: {last}" if last else ""
            if w.failures > self.policy.max_restarts:
                raise GaveUp(
                    f"{w.child.name} exited with code {code} {w.failures} times in a row, each within "
                    f"{self.policy.stable_after:.0f} s of its start; giving up. See {w.child.log}{said}")
            delay = self.policy.delay(w.failures)
            w.restart_at = now + delay
            self.log(f"{w.child.name} exited with code {code} after {ran:.0f} s{said}; restarting it in "
                     f"{delay:.0f} s (try {w.failures} of {self.policy.max_restarts}); backends keep running")
