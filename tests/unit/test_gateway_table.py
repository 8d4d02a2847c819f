"""The routing table's cache (reads on an interval and on a miss, one read for many callers,
the last good table when a read fails), its JSON form, and finding ``usage`` in answers."""

from __future__ import annotations

import asyncio

import pytest

from gpufleet.gateway.table import Replica, Route, RouteTable, RoutingCache
from gpufleet.gateway.upstream import usage_of
from gpufleet.gateway.errors import no_replica, unknown_model
import json


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(version: int) -> RouteTable:
    r = Replica(instance=version, name=f"d-{version}", deployment="d", worker="w", url="http://127.0.0.1:1")
    return RouteTable({"d": Route("d", 1, (r,))})


class Source:
    def __init__(self) -> None:
        self.reads = 0
        self.fail = False
        self.fresh: list[bool] = []

    async def __call__(self, fresh: bool) -> RouteTable:
        self.reads += 1
        self.fresh.append(fresh)
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("server down")
        return table(self.reads)


def test_fresh_table_is_reused_and_a_stale_one_read_again() -> None:
    async def run() -> None:
        clock, source = Clock(), Source()
        cache = RoutingCache(source, refresh_s=1.0, clock=clock)
        assert (await cache.table()).routes["d"].replicas[0].instance == 1
        clock.now += 0.5
        await asyncio.gather(*(cache.table() for _ in range(50)))
        assert source.reads == 1  # fresh: no read
        clock.now += 1.0  # stale but recent: answered from the cache, read in the background
        assert (await cache.table()).routes["d"].replicas[0].instance == 1
        await asyncio.sleep(0.05)
        assert source.reads == 2
        assert (await cache.table()).routes["d"].replicas[0].instance == 2
        clock.now += 10  # very old: the caller waits for the new read
        assert (await cache.table()).routes["d"].replicas[0].instance == 3
    asyncio.run(run())


def test_concurrent_misses_share_one_read() -> None:
    async def run() -> None:
        source = Source()
        cache = RoutingCache(source, refresh_s=1.0)
        await cache.table()
        await asyncio.sleep(0.15)
        await asyncio.gather(*(cache.refresh(min_age=0.1) for _ in range(100)))
        assert source.reads == 2
        assert source.fresh == [False, True]  # a miss asks the source for a fresh table
    asyncio.run(run())


def test_a_failed_read_keeps_the_last_table_and_is_not_retried_per_request() -> None:
    async def run() -> None:
        clock, source = Clock(), Source()
        cache = RoutingCache(source, refresh_s=1.0, clock=clock)
        await cache.table()
        source.fail = True
        clock.now += 10
        for _ in range(20):
            assert (await cache.table()).routes["d"].replicas[0].instance == 1
        assert source.reads == 2
    asyncio.run(run())


def test_first_read_failing_is_an_error() -> None:
    async def run() -> None:
        source = Source()
        source.fail = True
        with pytest.raises(RuntimeError, match="server down"):
            await RoutingCache(source, refresh_s=1.0).table()
    asyncio.run(run())


def test_table_json_round_trip() -> None:
    t = table(7)
    assert RouteTable.from_json(json.loads(json.dumps(t.to_json()))) == t


@pytest.mark.parametrize(("body", "usage"), [
    (b'{"choices":[],"usage":{"completion_tokens":5,"prompt_tokens":9,"total_tokens":14}}',
     {"completion_tokens": 5, "prompt_tokens": 9, "total_tokens": 14}),
    (b'{"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":0}},"id":"x"}',
     {"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 0}}),
    (b'data: {"choices":[{"delta":{}}]}\n\ndata: {"choices":[],"usage":{"completion_tokens":2}}\n\ndata: [DONE]\n\n',
     {"completion_tokens": 2}),
    (b'{"choices":[]}', None),
    (b'{"usage":{"completion_tokens":', None),  # cut off
    (b'{"usage": null}', None),
    (b'{"usage": null, "timings": {"n": 1}}', None),  # not the next object
    (b'{"text": "a \\"usage\\" word", "usage" : {"prompt_tokens": 4}}', {"prompt_tokens": 4}),
])
def test_usage_of(body: bytes, usage: dict | None) -> None:
    assert usage_of(body) == usage


def test_errors_have_the_openai_shape() -> None:
    for err, status in ((unknown_model("m"), 404), (no_replica("m", "none RUNNING"), 503)):
        response = err.response()
        assert response.status_code == status
        body = json.loads(response.body)
        assert set(body["error"]) == {"message", "type", "code"} and "'m'" in body["error"]["message"]
