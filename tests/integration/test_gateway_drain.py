"""Drain against real llama.cpp servers: a replica marked for removal gets no new request from
the gateway while its long stream finishes, and the node's drain step returns only once the
backend's slots are idle (or the grace runs out, or the backend is gone)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpufleet.node.drain import drain, in_progress
from tests.integration.test_gateway import count, deploy_running, post
from tests.support.gateway import (
    GatewayServer,
    LlamaServer,
    chat_body,
    start_gateway_server,
    stream_chunks,
    write_long_model,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_long_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def gw(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    mp = pytest.MonkeyPatch()
    mp.setenv("GPUFLEET_GATEWAY_REFRESH_S", "0.2")
    server = start_gateway_server(tmp_path_factory.mktemp("server"), model)
    mp.undo()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pair(model: Path, tmp_path: Path) -> Iterator[list[LlamaServer]]:
    servers = [LlamaServer.start(model, tmp_path), LlamaServer.start(model, tmp_path)]
    try:
        yield servers
    finally:
        for s in servers:
            s.kill()


class LongStream(threading.Thread):
    """A long streamed chat through the gateway, recording what arrived and when it ended."""

    def __init__(self, url: str, model: str, headers: dict[str, str], tokens: int = 3000) -> None:
        super().__init__()
        self.url, self.model, self.tokens, self.headers = url, model, tokens, headers
        self.body = b""
        self.first = threading.Event()
        self.ended_at = 0.0

    def run(self) -> None:
        for _, chunk in stream_chunks(f"{self.url}/v1/chat/completions",
                                      chat_body(self.model, max_tokens=self.tokens, stream=True, ignore_eos=True),
                                      headers=self.headers):
            self.body += chunk
            self.first.set()
        self.ended_at = time.monotonic()


def test_scale_down_drains_the_replica_with_a_long_stream(gw: GatewayServer, pair: list[LlamaServer]) -> None:
    ids = deploy_running(gw, "drain", pair)
    names = [gw.instance_name(i) for i in ids]
    stream = LongStream(gw.url, "drain", gw.headers)
    stream.start()
    assert stream.first.wait(30)
    m = gw.metrics()
    [victim] = [k for k, n in enumerate(names) if count(m, "gpufleet_gateway_in_flight_requests", replica=n) == 1]
    survivor = 1 - victim
    backend = pair[victim]
    assert in_progress(backend.url, httpx.Client()) == 1

    gw.mark_deleting(ids[victim])  # the plan's MARK_FOR_REMOVAL for a scale-down
    outcome: list = []
    drainer = threading.Thread(target=lambda: outcome.append((drain(backend.url, grace=120, settle=0.5),
                                                              time.monotonic())))
    drainer.start()
    time.sleep(0.5)  # more than one table refresh (0.2 s)
    before = gw.metrics()
    for _ in range(6):
        assert post(gw, chat_body("drain")).status_code == 200
    after = gw.metrics()
    sent_to = [count(after, "gpufleet_gateway_requests_total", replica=n)
               - count(before, "gpufleet_gateway_requests_total", replica=n) for n in names]
    assert sent_to[victim] == 0 and sent_to[survivor] == 6, sent_to
    assert stream.is_alive(), "the stream ended before the drain was tested; make it longer"
    assert drainer.is_alive(), "the drain ended while the stream was still in progress"

    stream.join(timeout=180)
    drainer.join(timeout=180)
    assert stream.body.rstrip().endswith(b"data: [DONE]"), stream.body[-200:]
    [(drained, drained_at)] = outcome
    assert drained.outcome == "idle", drained
    assert drained_at >= stream.ended_at - 0.5  # not before the stream's last bytes
    backend.kill()  # then it is stopped: nothing more reaches it
    assert all(post(gw, chat_body("drain")).status_code == 200 for _ in range(3))


def test_drain_gives_up_after_the_grace(gw: GatewayServer, pair: list[LlamaServer]) -> None:
    deploy_running(gw, "grace", pair[:1])
    stream = LongStream(gw.url, "grace", gw.headers)
    stream.start()
    assert stream.first.wait(30)
    t0 = time.monotonic()
    drained = drain(pair[0].url, grace=1.0, settle=0.0)
    assert drained.outcome == "grace" and 0.9 <= time.monotonic() - t0 < 5
    assert stream.is_alive()
    stream.join(timeout=180)


def test_drain_of_idle_gone_and_unknown_backends(gw: GatewayServer, pair: list[LlamaServer]) -> None:
    idle = drain(pair[0].url, grace=30, settle=0.3)
    assert idle.outcome == "idle" and 0.3 <= idle.waited_s < 3
    pair[1].kill()
    assert drain(pair[1].url, grace=30, settle=5).outcome == "gone"
    t0 = time.monotonic()
    unknown = drain(gw.url + "/no-backend-here", grace=30, settle=0.5)  # answers, but neither /slots nor vLLM
    assert unknown.outcome == "unknown" and 0.5 <= time.monotonic() - t0 < 3
