"""A `gpufleet gateway` process's own HTTP server (gpufleet.gateway.front) against real llama.cpp
servers and a gpufleet server: answers and their spread, streaming chunk by chunk, refusals in
the OpenAI shape, the routes it leaves to the Starlette app, and HTTP/1.1 as callers use it on
the wire (keep-alive, pipelining, Expect: 100-continue, HTTP/1.0, a caller leaving mid-stream)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import (
    GatewayServer,
    LlamaServer,
    chat_body,
    start_front,
    start_gateway_server,
    stream_chunks,
    write_long_model,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_long_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def backends(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    logs = tmp_path_factory.mktemp("llama-logs")
    servers = [LlamaServer.start(model, logs) for _ in range(2)]
    yield servers
    for s in servers:
        s.kill()


@pytest.fixture(scope="module")
def gw(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = start_gateway_server(tmp_path_factory.mktemp("server"), model)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def front(gw: GatewayServer, backends: list[LlamaServer]) -> Iterator[str]:
    """The front in a thread of its own, as `gpufleet gateway` runs it; deployment "fr" has two
    RUNNING replicas, one on each llama.cpp server."""
    for iid, backend in zip(gw.deploy("fr", 2), backends):
        gw.run(iid, backend)
    running = start_front(gw)
    yield running.url
    running.stop()


def gauge(base: str, headers: dict[str, str], name: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", headers=headers, timeout=10).text
    return {s.labels.get("replica", ""): s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and s.labels.get("deployment") == "fr"}


def test_answers_spread_over_both_replicas_on_one_kept_alive_connection(front: str, gw: GatewayServer) -> None:
    before = gauge(front, gw.headers, "gpufleet_gateway_requests_total")
    with httpx.Client(headers=gw.headers, timeout=60) as client:
        for _ in range(4):
            r = client.post(f"{front}/v1/chat/completions", json=chat_body("fr"))
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["role"] == "assistant"
    after = gauge(front, gw.headers, "gpufleet_gateway_requests_total")
    assert sorted(after[k] - before.get(k, 0) for k in after) == [2, 2]  # 4 requests, turns taken


def test_streams_chunk_by_chunk(front: str, gw: GatewayServer) -> None:
    arrivals = list(stream_chunks(f"{front}/v1/chat/completions",
                                  chat_body("fr", max_tokens=1000, stream=True, ignore_eos=True), headers=gw.headers))
    body = b"".join(c for _, c in arrivals)
    assert body.rstrip().endswith(b"data: [DONE]")
    assert len(arrivals) > 50, f"{len(arrivals)} pieces: the stream was buffered"
    assert arrivals[-1][0] - arrivals[0][0] > 0.3, "every piece arrived at once: the stream was buffered"


def test_refusals_and_the_routes_left_to_the_app(front: str, gw: GatewayServer) -> None:
    none = httpx.post(f"{front}/v1/chat/completions", json=chat_body("fr"), timeout=10)
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
    assert none.json()["error"]["type"] == "authentication_error"
    unknown = httpx.post(f"{front}/v1/chat/completions", json=chat_body("nope"), headers=gw.headers, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    bad = httpx.post(f"{front}/v1/chat/completions", content=b"[1]", headers=gw.headers, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    # not the hot path: the Starlette app answers, behind the same authentication
    assert httpx.get(f"{front}/v1/chat/completions", headers=gw.headers, timeout=10).status_code == 405
    assert httpx.get(f"{front}/v1/models", timeout=10).status_code == 401
    models = httpx.get(f"{front}/v1/models", headers=gw.headers, timeout=10).json()
    assert "fr" in [m["id"] for m in models["data"]]
    assert httpx.get(f"{front}/no/such/path", headers=gw.headers, timeout=10).status_code == 404


def _raw(front: str, payload: bytes, until_closed: bool = False, wait_s: float = 30) -> bytes:
    host, port = front.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        s.sendall(payload)
        data = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            if not until_closed and data.count(b"HTTP/1.1 200") >= 2 and data.rstrip().endswith(b"}"):
                break
        return data


def _request(gw: GatewayServer, version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    body = json.dumps(chat_body("fr", max_tokens=4)).encode()
    return (b"POST /v1/chat/completions HTTP/" + version + b"\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: " + gw.headers["Authorization"].encode() + b"\r\n" + extra +
            b"content-length: %d\r\n\r\n%s" % (len(body), body))


def test_pipelined_requests_are_answered_in_order(front: str, gw: GatewayServer) -> None:
    data = _raw(front, _request(gw) + _request(gw))
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2, data[:500]
    assert data.count(b'"choices"') == 2


def test_expect_100_continue_and_an_http_1_0_caller(front: str, gw: GatewayServer) -> None:
    data = _raw(front, _request(gw, extra=b"expect: 100-continue\r\n"), until_closed=False, wait_s=10)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), data[:200]
    old = _raw(front, _request(gw, version=b"1.0"), until_closed=True)  # the gateway closes after answering
    head, _, body = old.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in head.lower()
    assert json.loads(body)["object"] == "chat.completion"


def test_a_caller_that_leaves_mid_stream_frees_its_replica(front: str, gw: GatewayServer) -> None:
    body = json.dumps(chat_body("fr", max_tokens=4000, stream=True, ignore_eos=True)).encode()
    host, port = front.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"authorization: " + gw.headers["Authorization"].encode() +
                  b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in got.lower()
        assert sum(gauge(front, gw.headers, "gpufleet_gateway_in_flight_requests").values()) == 1
    deadline = time.monotonic() + 10  # closed: the request ends, and its backend connection with it
    while sum(gauge(front, gw.headers, "gpufleet_gateway_in_flight_requests").values()) != 0:
        assert time.monotonic() < deadline, "the request of a caller that left is still in flight"
        time.sleep(0.1)
    r = httpx.post(f"{front}/v1/chat/completions", json=chat_body("fr"), headers=gw.headers, timeout=60)
    assert r.status_code == 200
