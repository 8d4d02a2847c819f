"""Least outstanding requests: a new request goes to the replica with the fewest requests
this gateway has in flight to it; ties go round-robin, so that sequential requests (all
counts 0) still spread over the replicas.

Counts are per gateway process. With several gateways each balances its own share, which
is what least-outstanding needs: a replica slowed by long generations holds more of every
gateway's requests and so gets fewer new ones from each. Keyed by instance id, so a
replica that leaves the table and comes back (a restart) starts again at what is in flight.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from gpufleet.gateway.table import Replica


class LeastOutstanding:
    def __init__(self) -> None:
        self._outstanding: dict[int, int] = {}
        self._turn = 0

    def outstanding(self, instance: int) -> int:
        return self._outstanding.get(instance, 0)

    def pick(self, replicas: Sequence[Replica], exclude: Collection[int] = ()) -> Replica | None:
        """The replica to send the next request to (None: every one is excluded). Among the
        least loaded, the first at or after this balancer's turn, which then moves on."""
        n = len(replicas)
        if n == 0:
            return None
        start = self._turn % n
        self._turn += 1
        best: Replica | None = None
        best_load = 0
        for k in range(n):
            replica = replicas[(start + k) % n]
            if replica.instance in exclude:
                continue
            load = self._outstanding.get(replica.instance, 0)
            if best is None or load < best_load:
                best, best_load = replica, load
        return best

    def acquire(self, replica: Replica) -> None:
        self._outstanding[replica.instance] = self._outstanding.get(replica.instance, 0) + 1

    def release(self, replica: Replica) -> None:
        left = self._outstanding.get(replica.instance, 0) - 1
        if left > 0:
            self._outstanding[replica.instance] = left
        else:
            self._outstanding.pop(replica.instance, None)
