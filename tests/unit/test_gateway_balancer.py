"""Least outstanding requests, as tables: loads in, the replicas picked out."""

from __future__ import annotations

import pytest

from gpufleet.gateway.balancer import LeastOutstanding
from gpufleet.gateway.table import Replica


def replicas(n: int) -> list[Replica]:
    return [Replica(instance=i, name=f"r{i}", deployment="d", worker="w", url=f"http://h:{i}") for i in range(n)]


@pytest.mark.parametrize(("loads", "exclude", "picks"), [
    # all idle: round-robin, so sequential requests spread
    ([0, 0], (), [0, 1, 0, 1]),
    ([0, 0, 0], (), [0, 1, 2, 0, 1, 2]),
    # the least loaded wins whatever the turn
    ([3, 0, 5], (), [1, 1, 1]),
    ([2, 2, 1], (), [2, 2, 2]),
    # the least loaded take turns, the busy one is never picked
    ([0, 4, 0], (), [0, 2, 0, 2, 0, 2]),
    # excluded replicas (failed this request) are skipped even when least loaded
    ([0, 5, 9], (0,), [1, 1]),
    ([0, 0], (0, 1), [None, None]),
    # one replica: always it
    ([7], (), [0, 0]),
    # none
    ([], (), [None]),
])
def test_pick_without_acquiring(loads: list[int], exclude: tuple[int, ...], picks: list[int | None]) -> None:
    rs = replicas(len(loads))
    b = LeastOutstanding()
    for r, load in zip(rs, loads):
        for _ in range(load):
            b.acquire(r)
    got = [(p.instance if (p := b.pick(rs, exclude)) else None) for _ in picks]
    assert got == picks


@pytest.mark.parametrize(("n", "requests", "expected_loads"), [
    (2, 5, [3, 2]),
    (3, 7, [3, 2, 2]),
    (3, 3, [1, 1, 1]),
])
def test_acquired_requests_fill_evenly(n: int, requests: int, expected_loads: list[int]) -> None:
    """Concurrent requests (each still in flight when the next comes) spread evenly."""
    rs = replicas(n)
    b = LeastOutstanding()
    for _ in range(requests):
        picked = b.pick(rs)
        assert picked is not None
        b.acquire(picked)
    assert [b.outstanding(r.instance) for r in rs] == expected_loads


def test_release_returns_the_replica_to_the_pool() -> None:
    rs = replicas(2)
    b = LeastOutstanding()
    b.acquire(rs[0])
    b.acquire(rs[0])
    assert b.pick(rs).instance == 1
    b.release(rs[0])
    b.release(rs[0])
    assert b.outstanding(0) == 0
    b.release(rs[0])  # a release too many never goes negative
    assert b.outstanding(0) == 0
