"""The HTTP/1.1 server of a ``gpufleet gateway`` process: an asyncio protocol parsed by httptools
that hands the inference routes to gpufleet.gateway.exchange and everything else to its
Starlette app as plain ASGI.

Why not uvicorn, which serves the gpufleet server: a gateway process exists to pass requests
on, and the benchmark (docs/gateway.md, Overhead) showed uvicorn's protocol, Starlette's
routing and request objects costing several times what the pass-on itself does. Here the hot
path is: parse, then an :class:`~gpufleet.gateway.exchange.Exchange` sends the request from
this parser's callback and writes the answer from the backend's.

HTTP/1.1 as the callers use it: keep-alive (idle connections closed after
:data:`CALLER_IDLE_S`), pipelined requests answered in order, ``Expect: 100-continue``,
chunked request bodies (httptools decodes them), chunked answers when the length is not
known (HTTP/1.0 callers get the body and a close instead), and back-pressure: a streamed
answer is not read from the backend while the caller's socket buffer is full. A caller that
leaves mid-answer ends its request, which closes the backend connection.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httptools
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message

from gpufleet.gateway.exchange import Deadlines, Exchange, simple_answer, status_line
from gpufleet.gateway.remote_auth import RemoteAuthenticator, key_digest
from gpufleet.gateway.routes import ENDPOINTS, Gateway
from gpufleet.gateway.upstream import FORWARD_REQUEST_HEADERS
from gpufleet.server.auth import token_of

log = logging.getLogger(__name__)

#: an idle caller connection is closed after this (uvicorn's setting for gateway processes was the same)
CALLER_IDLE_S = 60.0
HOT_PATHS = frozenset(p.encode() for p in ENDPOINTS)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_FORWARDED = frozenset(h.encode() for h in FORWARD_REQUEST_HEADERS)
_NOTED = _FORWARDED | {b"expect", b"authorization", b"x-api-key"}
_NOTED_LENGTHS = frozenset(len(name) for name in _NOTED)


@dataclass
class _Request:
    method: bytes
    path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]  # lowercase names; empty for the inference routes (they need none)
    body: bytes
    keep_alive: bool
    http11: bool
    #: the caller's key (gpufleet.server.auth.token_of) and its remote_auth.key_digest
    token: str | None
    digest: bytes
    #: the headers the backend sees (upstream.FORWARD_REQUEST_HEADERS), as they go on the wire
    forwarded: bytes


class GatewayFront:
    """What every caller connection shares: the gateway, its authenticator and its ASGI app."""

    def __init__(self, app: ASGIApp, gateway: Gateway, authenticator: RemoteAuthenticator,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.app, self.gateway, self.authenticator = app, gateway, authenticator
        self._on_close = on_close
        self._deadlines: Deadlines | None = None

    def deadlines(self, loop: asyncio.AbstractEventLoop) -> Deadlines:
        if self._deadlines is None:
            self._deadlines = Deadlines(loop)
        return self._deadlines

    @classmethod
    def of(cls, app: Starlette) -> "GatewayFront":
        """The front of ``create_gateway_app``'s app (its state holds the gateway and what to close)."""
        return cls(app, app.state.gateway, app.state.authenticator, app.state.close)

    def connection(self) -> "CallerConnection":
        return CallerConnection(self)

    async def close(self) -> None:
        """What the app's lifespan closes at shutdown (the front runs no lifespan)."""
        if self._on_close is not None:
            await self._on_close()
        else:
            await self.gateway.close()
            await self.authenticator.close()


class CallerConnection(asyncio.Protocol):
    """One caller's connection: its requests answered one at a time, in order."""

    def __init__(self, front: GatewayFront) -> None:
        self.front = front
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[_Request] = collections.deque()
        #: the request being answered: an exchange (the hot path) or the app's task
        self.current: Exchange | asyncio.Task[None] | None = None
        self.paused = False
        self.writable = asyncio.Event()  # for the app's answers, which await it
        self.writable.set()
        self.closed = False
        self.last_token: str | None = None  # this connection's key and its digest, hashed once
        self.last_digest = key_digest(None)
        self.last_active = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self._dispatching = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.expect_continue = False
        self.forwarded: list[bytes] = []
        self.credentials: list[tuple[bytes, bytes]] = []
        #: an inference route (known at the first header): its headers are not kept in a list
        self.hot: bool | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        self.deadlines = self.front.deadlines(self.loop)
        self.last_active = self.loop.time()
        self.idle_timer = self.loop.call_later(CALLER_IDLE_S, self._idle_check)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrades are not served here")
        except httptools.HttpParserCallbackError as exc:  # raised by our own callbacks: a fault of the gateway's
            log.error("the gateway failed on a request", exc_info=exc.__context__)
            self._fail(500, "the gateway failed; its log says why")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.paused = False
        self.writable.set()
        self.pending.clear()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        current, self.current = self.current, None
        if isinstance(current, Exchange):
            current.abandon()  # the caller left: its request stops, and with it the backend's answer
        elif current is not None and not current.done():
            current.cancel()

    def pause_writing(self) -> None:
        self.paused = True
        self.writable.clear()
        if isinstance(self.current, Exchange):
            self.current.caller_paused()

    def resume_writing(self) -> None:
        self.paused = False
        self.writable.set()
        if isinstance(self.current, Exchange):
            self.current.caller_resumed()

    # -- httptools callbacks

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.hot is None:  # the request line is in: is this a request the exchange passes on?
            self.hot = self.parser.get_method() == b"POST" and self.url.partition(b"?")[0] in HOT_PATHS
        if not self.hot:  # the app's (ASGI) request: every header, lowercase
            self.headers.append((name.lower(), value))
        if len(name) in _NOTED_LENGTHS:  # most headers are none of these: not lowercased at all
            name = name.lower()
            if name not in _NOTED:
                return
            if name in _FORWARDED:  # read here, once, rather than searched for later
                self.forwarded.append(name + b": " + value + b"\r\n")
            elif name == b"expect":
                self.expect_continue = value.lower() == b"100-continue"
            else:
                self.credentials.append((name, value))

    def on_headers_complete(self) -> None:
        if self.expect_continue and self.transport is not None and not self.pending and self.current is None:
            self.transport.write(_CONTINUE)  # never inside an answer still being written

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path, _, query = self.url.partition(b"?")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        token = token_of(self.credentials) if self.credentials else None
        if token != self.last_token:  # a caller sends the same key on every request of a connection
            self.last_token, self.last_digest = token, key_digest(token)
        self.pending.append(_Request(self.parser.get_method(), path, query, self.headers, body,
                                     self.parser.should_keep_alive(), self.parser.get_http_version() == "1.1",
                                     token, self.last_digest, b"".join(self.forwarded)))
        self._reset()
        if self.current is None and not self._dispatching:
            self._next()

    # -- answering, one request at a time

    def _next(self) -> None:
        """Answer the next pending request: the hot routes by an exchange, the rest by the app."""
        self._dispatching = True
        try:
            while self.current is None and self.pending and not self.closed:
                request = self.pending.popleft()
                if request.method == b"POST" and request.path in HOT_PATHS:
                    exchange = Exchange(self, self.front.gateway, self.front.authenticator, request)
                    self.current = exchange
                    exchange.start()  # an answer given at once (a refusal) has called finished()
                else:
                    self.current = self.loop.create_task(self._answer_app(request))
        finally:
            self._dispatching = False
        if self.current is None:
            self.last_active = self.loop.time()

    def finished(self, keep_alive: bool) -> None:
        """The current answer is written (gpufleet.gateway.exchange.Caller)."""
        self.current = None
        if not keep_alive:
            self._close()
        elif self.pending and not self._dispatching:
            self._next()
        else:
            self.last_active = self.loop.time()

    def abort(self) -> None:
        """The current answer cannot be completed: the caller sees the connection close."""
        self.current = None
        self._close()

    async def _answer_app(self, request: _Request) -> None:
        try:
            await self.front.app(_scope(request, self.transport), _receiver(request, self),
                                 _Writer(self, request).send)
        except asyncio.CancelledError:
            raise
        except (OSError, ClientDisconnect):  # the caller left while its answer was written
            self.abort()
            return
        except Exception:  # noqa: BLE001 - answered 500, logged; the process serves on
            log.exception("the gateway failed to answer %s %s", request.method.decode(), request.path.decode())
            self.current = None
            if not self.closed:
                self._fail(500, "the gateway failed; its log says why")
            return
        self.finished(request.keep_alive)

    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None and not self.closed:
            kind = "server_error" if status >= 500 else "invalid_request_error"
            body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
            self.transport.write(simple_answer(status, {}, body, keep_alive=False))
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def _idle_check(self) -> None:
        """Close the connection once it has been idle for :data:`CALLER_IDLE_S` (one timer per
        connection, moved on when it fires early, rather than one per request)."""
        if self.closed:
            return
        left = CALLER_IDLE_S
        if self.current is None and not self.pending and not self.url:  # url: a request being read
            left = self.last_active + CALLER_IDLE_S - self.loop.time()
            if left <= 0:
                self._close()
                return
        self.idle_timer = self.loop.call_later(left, self._idle_check)


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
        lines = [status_line(status).rstrip()]
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


def run(app: Starlette, host: str, port: int) -> None:
    """Serve ``create_gateway_app``'s app until SIGINT or SIGTERM, on uvloop when it is installed."""
    front = GatewayFront.of(app)
    gc.freeze()  # what start-up made (modules, the app) is left out of every later collection

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
        await front.close()


__all__ = ["GatewayFront", "run", "serve"]
