"""The front's pass-on (gpufleet.gateway.exchange) when things go wrong, against real llama.cpp
servers and raw HTTP/1.1 backends on 127.0.0.1 that misbehave on purpose: a replica killed
under load and one refusing connections (retried elsewhere), a kept-alive connection the
backend drops (retried on a new one), no replica (the wait, then 503), a replica that never
answers (504), an answer cut mid-body (502) and a stream cut mid-way (the caller's connection
closes), a caller slower than its stream (back-pressure up to the backend), and /metrics
matching what was sent."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gpufleet.gateway.upstream import Upstream
from tests.support.gateway import (
    GatewayServer,
    LlamaServer,
    RunningFront,
    chat_body,
    start_front,
    start_gateway_server,
    stream_chunks,
    write_long_model,
)
from tests.support.servers import free_port

import xllamacpp  # noqa: F401,E402 - a dependency: its absence must fail, not skip

SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def sse_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class RawBackend:
    """An HTTP/1.1 server on 127.0.0.1, in a thread of its own, that answers the n-th request
    on a connection as ``answer(backend, writer, n)`` does; it returns False to close."""

    def __init__(self, answer: Callable[["RawBackend", asyncio.StreamWriter, int], Awaitable[bool]]) -> None:
        self.answer = answer
        self.port = free_port()
        self.requests = 0
        self.written = 0
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def main() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            started.set()
            try:
                await self.server.serve_forever()
            except asyncio.CancelledError:  # stop(): the server closed
                pass

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True)
        self.thread.start()
        started.wait(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), b"0"))
                await reader.readexactly(length)
                n += 1
                self.requests += 1
                if not await self.answer(self, writer, n):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)


def json_answer(usage: int = 3) -> bytes:
    body = json.dumps({"object": "chat.completion", "choices": [],
                       "usage": {"prompt_tokens": usage, "completion_tokens": 1}}).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_long_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def gw(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = start_gateway_server(tmp_path_factory.mktemp("server"), model)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def front(gw: GatewayServer) -> Iterator[RunningFront]:
    running = start_front(gw, wait_s=1.0)
    yield running
    running.stop()


def deploy_on(gw: GatewayServer, name: str, backends: list) -> list[int]:  # noqa: ANN001 - anything with .port
    ids = gw.deploy(name, len(backends))
    for iid, backend in zip(ids, backends):
        gw.run(iid, backend)
    return ids


def post(front: RunningFront, gw: GatewayServer, model: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{front.url}/v1/chat/completions", json=chat_body(model, **extra), headers=gw.headers,
                      timeout=60)


def count(front: RunningFront, gw: GatewayServer, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in front.metrics(gw.headers).items()
               if n == name and labels.items() <= dict(ls).items())


def test_a_replica_killed_under_load_and_one_refusing(front: RunningFront, gw: GatewayServer, model: Path,
                                                      tmp_path: Path) -> None:
    """Requests sent after a replica is killed all succeed on the survivor; a replica whose port
    refuses connections is tried no more for that request."""
    a, b = LlamaServer.start(model, tmp_path), LlamaServer.start(model, tmp_path)
    try:
        deploy_on(gw, "fkill", [a, b])
        results: list[tuple[float, int]] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = post(front, gw, "fkill", max_tokens=16).status_code
                except httpx.HTTPError:
                    status = -1
                results.append((sent, status))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        b.kill()
        killed_at = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        after_kill = [status for sent, status in results if sent > killed_at]
        assert after_kill and all(s == 200 for s in after_kill), after_kill
        assert sum(1 for sent, s in results if sent <= killed_at and s != 200) <= 3
        # b is gone: its port refuses, so every request to it is retried on a at once
        assert all(post(front, gw, "fkill", max_tokens=2).status_code == 200 for _ in range(4))
        assert count(front, gw, "gpufleet_gateway_retries_total", deployment="fkill", reason="refused") >= 1
    finally:
        a.kill()
        b.kill()


def test_a_kept_alive_connection_the_backend_dropped_is_retried_on_a_new_one(front: RunningFront,
                                                                            gw: GatewayServer) -> None:
    async def first_only(backend: RawBackend, writer: asyncio.StreamWriter, n: int) -> bool:
        if n > 1:  # a second request on the same connection: closed unanswered, as a backend whose keep-alive ran out
            return False
        writer.write(json_answer())
        await writer.drain()
        return True

    backend = RawBackend(first_only)
    try:
        deploy_on(gw, "fdrop", [backend])
        with httpx.Client(headers=gw.headers, timeout=30) as client:
            statuses = [client.post(f"{front.url}/v1/chat/completions", json=chat_body("fdrop")).status_code
                        for _ in range(5)]
        assert statuses == [200] * 5
        assert backend.requests >= 9  # each request after the first was sent twice: dropped, then on a new connection
        assert count(front, gw, "gpufleet_gateway_retries_total", deployment="fdrop", reason="disconnected") >= 4
    finally:
        backend.stop()


def test_no_replica_waits_then_503_and_a_late_replica_is_waited_for(front: RunningFront, gw: GatewayServer,
                                                                     model: Path, tmp_path: Path) -> None:
    gw.deploy("fstarting", 1)
    t0 = time.monotonic()
    r = post(front, gw, "fstarting")
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_replica", r.text
    assert 0.9 <= time.monotonic() - t0 < 10 and r.headers["retry-after"] == "1"
    gw.deploy("fzero", 0)
    r = post(front, gw, "fzero")
    assert r.status_code == 503 and "scaled to 0" in r.json()["error"]["message"]
    late = LlamaServer.start(model, tmp_path)
    try:
        [iid] = gw.deploy("flate", 1)
        threading.Timer(0.4, gw.run, args=(iid, late)).start()
        assert post(front, gw, "flate").status_code == 200
    finally:
        late.kill()


def test_a_replica_that_never_answers_is_504(front: RunningFront, gw: GatewayServer) -> None:
    async def never(backend: RawBackend, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(3600)
        return False

    backend = RawBackend(never)
    gateway = front.app.state.gateway
    saved = gateway.upstream
    try:
        deploy_on(gw, "fstuck", [backend])
        gateway.upstream = Upstream(request_timeout_s=1.5, connect_timeout_s=1.0)
        t0 = time.monotonic()
        r = post(front, gw, "fstuck")
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout", r.text
        assert 1.4 <= time.monotonic() - t0 < 10
        assert count(front, gw, "gpufleet_gateway_in_flight_requests", deployment="fstuck") == 0
    finally:
        gateway.upstream = saved
        backend.stop()


def test_an_answer_cut_mid_body_is_502_and_a_cut_stream_closes_the_connection(front: RunningFront,
                                                                              gw: GatewayServer) -> None:
    async def cut(backend: RawBackend, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"part")
        await writer.drain()
        return False

    async def cut_stream(backend: RawBackend, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(SSE_HEAD + sse_chunk(b"data: {\"n\": 1}\n\n"))
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(sse_chunk(b"data: {\"n\": 2}\n\n"))
        await writer.drain()
        return False  # closed before the last chunk

    cutter, streamer = RawBackend(cut), RawBackend(cut_stream)
    try:
        deploy_on(gw, "fcut", [cutter])
        r = post(front, gw, "fcut")
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_failed", r.text
        assert "broke off" in r.json()["error"]["message"]
        assert count(front, gw, "gpufleet_gateway_errors_total", deployment="fcut", code="upstream_cut") == 1

        deploy_on(gw, "fcutstream", [streamer])
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):  # the body ends without its last chunk
            with httpx.stream("POST", f"{front.url}/v1/chat/completions", json=chat_body("fcutstream", stream=True),
                              headers=gw.headers, timeout=30) as response:
                assert response.status_code == 200
                for piece in response.iter_raw():
                    received += piece
        assert b'data: {"n": 1}' in received and b'data: {"n": 2}' in received
        assert count(front, gw, "gpufleet_gateway_errors_total", deployment="fcutstream", code="upstream_cut") == 1
        assert count(front, gw, "gpufleet_gateway_in_flight_requests", deployment="fcutstream") == 0
        assert post(front, gw, "fcut").status_code == 502  # the front serves on
    finally:
        cutter.stop()
        streamer.stop()


def test_a_fault_of_the_gateway_is_a_500_and_the_front_serves_on(front: RunningFront, gw: GatewayServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug on the hot path (here: choosing a replica raises) answers 500 in the OpenAI shape,
    both when it strikes at once and once the request waits in a task; nothing hangs."""
    backend = RawBackend(lambda backend, writer, n: _answer(writer))
    try:
        deploy_on(gw, "fbug", [backend])
        assert post(front, gw, "fbug").status_code == 200
        gateway = front.app.state.gateway

        def broken(*_: object) -> None:
            raise RuntimeError("a bug")
        monkeypatch.setattr(gateway, "replica_now", broken)
        r = post(front, gw, "fbug")
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
        monkeypatch.setattr(gateway, "replica_now", lambda *_: None)  # to the task, which fails there
        monkeypatch.setattr(gateway, "replica_for", _raise_later)
        r = post(front, gw, "fbug")
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error", r.text
        monkeypatch.undo()
        assert post(front, gw, "fbug").status_code == 200
    finally:
        backend.stop()


async def _answer(writer: asyncio.StreamWriter) -> bool:
    writer.write(json_answer())
    await writer.drain()
    return True


async def _raise_later(*_: object) -> None:
    raise RuntimeError("a bug")


FLOOD_CHUNK = b"data: " + b"x" * (64 * 1024 - 8) + b"\n\n"
FLOOD_CHUNKS = 2048  # 128 MiB


def test_a_slow_caller_holds_the_backend_back(front: RunningFront, gw: GatewayServer) -> None:
    """A caller that stops reading a fast stream: the backend's writes stall too (the front stops
    reading it), instead of the front buffering the stream; once the caller reads, all of it
    arrives intact."""
    async def flood(backend: RawBackend, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(SSE_HEAD)
        for _ in range(FLOOD_CHUNKS):
            writer.write(sse_chunk(FLOOD_CHUNK))
            await writer.drain()
            backend.written += len(FLOOD_CHUNK)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    backend = RawBackend(flood)
    try:
        deploy_on(gw, "fflood", [backend])
        host, port = front.url.removeprefix("http://").split(":")
        body = json.dumps(chat_body("fflood", stream=True)).encode()
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"authorization: " + gw.headers["Authorization"].encode() +
                      b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
            time.sleep(1.5)  # not reading
            held = backend.written
            total = FLOOD_CHUNKS * len(FLOOD_CHUNK)
            assert held < total / 4, f"the backend wrote {held >> 20} MiB to a caller that read nothing"
            received = 0
            while True:
                piece = s.recv(1 << 20)
                received += len(piece)
                if not piece or piece.endswith(b"0\r\n\r\n"):
                    break
        assert backend.written == total and received > total, (backend.written, received, total)
    finally:
        backend.stop()


def test_metrics_match_what_was_sent(front: RunningFront, gw: GatewayServer, model: Path, tmp_path: Path) -> None:
    backends = [LlamaServer.start(model, tmp_path) for _ in range(2)]
    try:
        ids = deploy_on(gw, "fmeter", backends)
        prompt = completion = 0
        for _ in range(4):
            usage = post(front, gw, "fmeter", max_tokens=5).json()["usage"]
            prompt, completion = prompt + usage["prompt_tokens"], completion + usage["completion_tokens"]
        streamed = b"".join(c for _, c in stream_chunks(
            f"{front.url}/v1/chat/completions",
            chat_body("fmeter", max_tokens=6, stream=True, stream_options={"include_usage": True}),
            headers=gw.headers))
        usage = [json.loads(line[6:])["usage"] for line in streamed.split(b"\n")
                 if line.startswith(b"data: {") and b'"usage"' in line][-1]
        prompt, completion = prompt + usage["prompt_tokens"], completion + usage["completion_tokens"]
        post(front, gw, "fnothing-here")

        def c(name: str, **labels: str) -> float:
            return count(front, gw, name, **labels)
        assert c("gpufleet_gateway_requests_total", deployment="fmeter", status="200") == 5
        assert c("gpufleet_gateway_request_duration_seconds_count", deployment="fmeter") == 5
        assert c("gpufleet_gateway_time_to_first_token_seconds_count", deployment="fmeter") == 1
        assert c("gpufleet_gateway_tokens_total", deployment="fmeter", kind="prompt") == prompt
        assert c("gpufleet_gateway_tokens_total", deployment="fmeter", kind="completion") == completion
        assert c("gpufleet_gateway_in_flight_requests", deployment="fmeter") == 0
        assert c("gpufleet_gateway_errors_total", deployment="(unknown)", code="model_not_found") >= 1
        for iid in ids:  # balanced over both
            assert c("gpufleet_gateway_requests_total", replica=gw.instance_name(iid)) >= 2
        # the histogram's buckets are cumulative and end at the count
        assert c("gpufleet_gateway_request_duration_seconds_bucket", deployment="fmeter", le="+Inf") == 5
        assert c("gpufleet_gateway_request_duration_seconds_sum", deployment="fmeter") > 0
    finally:
        for b in backends:
            b.kill()
