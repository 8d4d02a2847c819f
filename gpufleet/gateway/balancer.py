"""Least outstanding requests: a new request goes to the replica with the fewest requests
this gateway has in flight to it; ties take turns, so that sequential requests (all
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
        """The replica to send the next request to (None: every one is excluded): one of the
        least loaded, taking turns among them."""
        least: list[Replica] = []
        least_load = 0
        for replica in replicas:
            if replica.instance in exclude:
                continue
            load = self._outstanding.get(replica.instance, 0)
            if not least or load < least_load:
                least, least_load = [replica], load
            elif load == least_load:
                least.append(replica)
        if not least:
            return None
        turn = self._turn
        self._turn += 1
        return least[turn % len(least)] if len(least) > 1 else least[0]

    def acquire(self, replica: Replica) -> None:
        self._outstanding[replica.instance] = self._outstanding.get(replica.instance, 0) + 1

    def release(self, replica: Replica) -> None:
        left = self._outstanding.get(replica.instance, 0) - 1
        if left > 0:
            self._outstanding[replica.instance] = left
        else:
            self._outstanding.pop(replica.instance, None)
