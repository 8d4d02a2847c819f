"""The gateway's backend client (gpufleet.gateway.upstream over gpufleet.gateway.wire) against
a raw HTTP/1.1 server on 127.0.0.1 whose behaviour each case sets: what happens on the wire
when a backend answers, streams, breaks off, stalls, closes kept-alive connections or is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gpufleet.gateway.upstream import BrokenAnswer, Unreachable, Upstream, response_headers
from tests.support.servers import free_port

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
           b"6\r\ndata: \r\n3\r\none\r\n0\r\n\r\n")
CUT = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial"
HEAD_ONLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n"



class Backend:
    """Answers each request with ``answer`` bytes; ``close_after``: close the connection after
    answering (as a backend whose keep-alive ran out)."""

    def __init__(self, answer: bytes, close_after: bool = False) -> None:
        self.answer, self.close_after = answer, close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), b"0"))
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answer)
                await writer.drain()
                if self.close_after or self.answer in (CUT,):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def _with(backend: Backend, body: Callable[[str], "asyncio.Future[None]"]) -> None:
    port = free_port()
    server = await asyncio.start_server(backend.serve, "127.0.0.1", port)
    try:
        await body(f"http://127.0.0.1:{port}")
    finally:
        server.close()


def run(backend: Backend, body: Callable[[str], "asyncio.Future[None]"]) -> None:
    asyncio.run(_with(backend, body))


def test_answers_reuse_one_kept_alive_connection_and_forward_only_the_headers_given() -> None:
    backend = Backend(OK)
    upstream = Upstream(request_timeout_s=5, connect_timeout_s=1)

    async def body(url: str) -> None:
        for _ in range(3):
            answer = await upstream.open(url + "/v1/chat/completions?x=1", b'{"model": "m"}',
                                         {"content-type": "application/json"})
            assert (answer.status, answer.content_type, await answer.read()) == (200, "application/json", b"{}")
            assert response_headers(answer) == {"content-type": "application/json"}  # hop headers dropped
            answer.release()
        await upstream.close()

    run(backend, body)
    assert backend.connections == 1  # 3 requests, one connection
    first = backend.requests[0]
    assert first.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert b"content-type: application/json" in first and b"content-length: 14" in first
    assert first.endswith(b'{"model": "m"}') and b"authorization" not in first.lower()


def test_a_chunked_stream_arrives_as_the_backend_wrote_it() -> None:
    async def body(url: str) -> None:
        upstream = Upstream(5, 1)
        answer = await upstream.open(url + "/v1/completions", b"{}", {})
        assert answer.content_type == "text/event-stream"
        assert [c async for c in answer.chunks()] == [b"data: ", b"one"]
        await upstream.close()

    run(Backend(CHUNKED), body)


def test_a_connection_the_backend_closed_while_idle_is_not_reused() -> None:
    backend = Backend(OK, close_after=True)

    async def body(url: str) -> None:
        upstream = Upstream(5, 1)
        for _ in range(2):
            answer = await upstream.open(url + "/v1/completions", b"{}", {})
            assert await answer.read() == b"{}"
            answer.release()
            await asyncio.sleep(0.05)  # the backend's close has arrived
        await upstream.close()

    run(backend, body)
    assert backend.connections == 2


def test_an_answer_cut_mid_body_is_broken() -> None:
    async def body(url: str) -> None:
        upstream = Upstream(5, 1)
        answer = await upstream.open(url + "/v1/completions", b"{}", {})
        with pytest.raises(BrokenAnswer):
            await answer.read()
        answer.release()  # a broken answer's connection is closed, not pooled
        await upstream.close()

    run(Backend(CUT), body)


def test_a_body_that_stalls_ends_at_the_request_deadline() -> None:
    async def body(url: str) -> None:
        upstream = Upstream(request_timeout_s=0.5, connect_timeout_s=1)
        answer = await upstream.open(url + "/v1/completions", b"{}", {})
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await answer.read()
        assert 0.2 < loop.time() - started < 2  # the whole request's deadline, counted from sending it
        await upstream.close()

    run(Backend(HEAD_ONLY), body)


def test_a_backend_that_never_answers_times_out_before_the_head() -> None:
    async def body(url: str) -> None:
        upstream = Upstream(request_timeout_s=0.3, connect_timeout_s=1)
        with pytest.raises(TimeoutError, match="no answer within 0.3 s"):
            await upstream.open(url + "/v1/completions", b"{}", {})
        await upstream.close()

    run(Backend(b""), body)


def test_nothing_listening_is_refused_and_a_close_before_the_head_is_disconnected() -> None:
    async def refused() -> None:
        upstream = Upstream(5, 1)
        with pytest.raises(Unreachable) as caught:
            await upstream.open(f"http://127.0.0.1:{free_port()}/v1/completions", b"{}", {})
        assert caught.value.reason == "refused"

    asyncio.run(refused())

    async def body(url: str) -> None:
        upstream = Upstream(5, 1)
        with pytest.raises(Unreachable) as caught:
            await upstream.open(url + "/v1/completions", b"{}", {})
        assert caught.value.reason == "disconnected"
        await upstream.close()

    run(Backend(b"", close_after=True), body)
