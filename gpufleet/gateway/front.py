"""The HTTP/1.1 server of a ``gpufleet gateway`` process: an asyncio protocol parsed by httptools
that hands the inference routes straight to the gateway and everything else to its Starlette
app as plain ASGI.

Why not uvicorn, which serves the gpufleet server: a gateway process exists to pass requests
on, and the benchmark (docs/gateway.md, Overhead) showed uvicorn's protocol, Starlette's
routing and request objects costing several times what the pass-on itself does. Here the hot
path is: parse, look up the caller's key in the authenticator's cache, ``Gateway.forward``,
write the answer. The answer is still a Starlette response, called as an ASGI app with this
module's ``send``, so the gateway has one way of answering whichever server runs it.

HTTP/1.1 as the callers use it: keep-alive (idle connections closed after
:data:`CALLER_IDLE_S`), pipelined requests answered in order, ``Expect: 100-continue``,
chunked request bodies (httptools decodes them), chunked answers when the length is not
known (HTTP/1.0 callers get the body and a close instead), and back-pressure: a streamed
answer waits while the caller's socket buffer is full. A caller that leaves mid-answer
cancels its request, which closes the backend connection (gpufleet.gateway.routes._relay).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import signal
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message

from gpufleet.gateway import errors
from gpufleet.gateway.remote_auth import RemoteAuthenticator, refusal
from gpufleet.gateway.routes import ENDPOINTS, Gateway
from gpufleet.gateway.upstream import FORWARD_REQUEST_HEADERS
from gpufleet.server.auth import token_of

log = logging.getLogger(__name__)

#: an idle caller connection is closed after this (uvicorn's setting for gateway processes was the same)
CALLER_IDLE_S = 60.0
HOT_PATHS = frozenset(p.encode() for p in ENDPOINTS)
_FORWARDED = frozenset(h.encode() for h in FORWARD_REQUEST_HEADERS)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class _Request:
    method: bytes
    path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    http11: bool


class GatewayFront:
    """What every caller connection shares: the gateway, its authenticator and its ASGI app."""

    def __init__(self, app: ASGIApp, gateway: Gateway, authenticator: RemoteAuthenticator) -> None:
        self.app, self.gateway, self.authenticator = app, gateway, authenticator

    def connection(self) -> "CallerConnection":
        return CallerConnection(self)

    async def answer(self, request: _Request) -> Response | None:
        """The hot path's answer, or None when the ASGI app should answer instead."""
        if request.method != b"POST" or request.path not in HOT_PATHS:
            return None
        checked = await self.authenticator.check(token_of(request.headers))
        if checked.principal is None:
            return refusal(checked.status, checked.message)
        forwarded = {k.decode(): v.decode("latin-1") for k, v in request.headers if k in _FORWARDED}
        try:
            return await self.gateway.forward(checked.principal, request.path.decode(),
                                              request.query.decode("latin-1"), request.body, forwarded)
        except errors.GatewayError as exc:
            return exc.response()


class CallerConnection(asyncio.Protocol):
    def __init__(self, front: GatewayFront) -> None:
        self.front = front
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[_Request] = collections.deque()
        self.serving: asyncio.Task[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrades are not served here")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable.set()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.serving is not None and not self.serving.done():
            self.serving.cancel()  # the caller left: its request stops, and with it the backend's answer

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._reset()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        busy = self.pending or (self.serving is not None and not self.serving.done())
        if self.transport is not None and not busy and (b"expect", b"100-continue") in (
                (k, v.lower()) for k, v in self.headers):
            self.transport.write(_CONTINUE)  # never inside an answer still being written

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path, _, query = self.url.partition(b"?")
        self.pending.append(_Request(self.parser.get_method(), path, query, self.headers, b"".join(self.body),
                                     self.parser.should_keep_alive(), self.parser.get_http_version() == "1.1"))
        if self.serving is None or self.serving.done():
            self.serving = asyncio.get_running_loop().create_task(self._serve())

    # -- answering

    async def _serve(self) -> None:
        while self.pending and not self.closed:
            request = self.pending.popleft()
            try:
                await self._answer(request)
            except asyncio.CancelledError:
                raise
            except (OSError, ClientDisconnect):  # the caller left while its answer was written
                self._close()
                return
            except Exception:  # noqa: BLE001 - answered 500, logged; the process serves on
                log.exception("the gateway failed to answer %s %s", request.method.decode(), request.path.decode())
                if not self.closed:
                    self._fail(500, "the gateway failed; its log says why")
                return
            if not request.keep_alive:
                self._close()
                return
        self._arm_idle()

    async def _answer(self, request: _Request) -> None:
        writer = _Writer(self, request)
        response = await self.front.answer(request)
        if response is None:
            await self.front.app(_scope(request, self.transport), _receiver(request, self), writer.send)
            return
        try:
            await response(_scope(request, self.transport), _receiver(request, self), writer.send)
        finally:
            if isinstance(response, StreamingResponse):
                await response.body_iterator.aclose()  # type: ignore[attr-defined]  # ends _relay at once

    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None and not self.closed:
            body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                         "code": status}}).encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, _reason(status), len(body), body))
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def _arm_idle(self) -> None:
        if not self.closed and not self.pending:
            self.idle_timer = asyncio.get_running_loop().call_later(CALLER_IDLE_S, self._close)


class _Writer:
    """ASGI ``send`` onto the caller's connection: the head is held back and written with the
    first body part (one write for a whole small answer)."""

    def __init__(self, connection: CallerConnection, request: _Request) -> None:
        self.connection = connection
        self.request = request
        self.head: bytes | None = None
        self.chunked = False

    async def send(self, message: Message) -> None:
        connection = self.connection
        if connection.closed:
            raise OSError("the caller closed the connection")
        if message["type"] == "http.response.start":
            self.head = self._head(message["status"], message.get("headers", []))
            return
        if message["type"] != "http.response.body":
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        out = self.head or b""
        self.head = None
        if self.chunked:
            if body:
                out += b"%x\r\n%s\r\n" % (len(body), body)
            if not more:
                out += b"0\r\n\r\n"
        else:
            out += body
        if out:
            assert connection.transport is not None
            connection.transport.write(out)
        if more and not connection.writable.is_set():
            await connection.writable.wait()  # the caller reads slower than the backend writes

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        lines = [b"HTTP/1.1 %d %s" % (status, _reason(status))]
        has_length = False
        for name, value in headers:
            has_length = has_length or name.lower() == b"content-length"
            lines.append(name + b": " + value)
        if not has_length:
            if self.request.http11:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked")
            else:
                self.request.keep_alive = False  # an HTTP/1.0 caller reads to the close
        if not self.request.keep_alive:
            lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"


def _scope(request: _Request, transport: Any) -> dict[str, Any]:  # noqa: ANN401 - an asyncio transport
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1" if request.http11 else "1.0", "method": request.method.decode(),
            "scheme": "http", "path": request.path.decode("latin-1"), "raw_path": request.path,
            "query_string": request.query, "root_path": "", "headers": request.headers,
            "client": transport.get_extra_info("peername") if transport else None,
            "server": transport.get_extra_info("sockname") if transport else None, "state": {}}


def _receiver(request: _Request, connection: CallerConnection):  # noqa: ANN202 - an ASGI receive
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        while not connection.closed:  # asked again: only a disconnect comes next
            await asyncio.sleep(1)
        return {"type": "http.disconnect"}

    return receive


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def run(app: Starlette, host: str, port: int) -> None:
    """Serve ``create_gateway_app``'s app until SIGINT or SIGTERM, on uvloop when it is installed."""
    front = GatewayFront(app, app.state.gateway, app.state.authenticator)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(front, host, port, stop)

    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


async def serve(front: GatewayFront, host: str, port: int, stop: asyncio.Event) -> None:
    """Listen until ``stop`` is set, then close the listener and the gateway's connections."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(front.connection, host, port, backlog=4096)
    try:
        await stop.wait()
    finally:
        server.close()
        await front.gateway.close()
        await front.authenticator.close()


__all__ = ["GatewayFront", "run", "serve"]
