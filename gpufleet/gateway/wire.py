"""HTTP/1.1 to the backends on raw asyncio connections, parsed by httptools (llama.cpp's and
uvicorn's own parser family): the gateway's hot path.

Why not aiohttp's client, which it used before: a request through the gateway cost about
270 µs of CPU, a third or more of it aiohttp's, and the load generator of
``benchmarks/gateway_overhead.py`` leaves a proxy about 55–90 µs per request before the
proxy, not the backend, sets the throughput. A
request here is one ``write`` of prebuilt bytes and a parser fed from ``data_received``;
a pooled connection is a list pop. What aiohttp gave that matters is kept: a pool per
backend address (uncapped), idle connections dropped before the backends' own keep-alive
closes them, a connect timeout, one deadline for the whole request and no idle timeout,
and a streamed body handed on chunk by chunk with back-pressure (reading from the backend
pauses while the caller is slower).

An answer goes to a :class:`Receiver` from the parser's callbacks: an :class:`Answer` for code
that awaits it (the gateway in the gpufleet server), or the front's exchange
(gpufleet.gateway.exchange), which writes it on to the caller from those same callbacks.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import httptools

log = logging.getLogger(__name__)

#: idle pooled connections are dropped after this, under the backends' own 5 s keep-alive
KEEPALIVE_S = 4.0
#: a streamed answer's unread bytes above which the backend connection stops being read
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Unreachable(Exception):
    """The replica failed before sending a byte of its answer: safe to try another.
    ``reason``: refused, disconnected or connect_timeout (the retries metric's label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class BrokenAnswer(Exception):
    """The backend broke off (or garbled) an answer it had begun."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    host_header: bytes

    @classmethod
    def parse(cls, base_url: str) -> "Address":
        """``http://HOST:PORT`` (a replica's URL as the routing table holds it)."""
        scheme, _, rest = base_url.partition("://")
        if scheme != "http" or not rest:
            raise ValueError(f"not an http:// address: {base_url!r}")
        netloc = rest.split("/", 1)[0]
        host, _, port = netloc.rpartition(":")
        if not host:
            host, port = netloc, "80"
        return cls(host.strip("[]"), int(port), netloc.encode("latin-1"))


class Receiver(Protocol):
    """Whoever a :class:`Connection` hands a backend's answer to, from the parser's callbacks:
    :class:`Answer` for code that awaits it, gpufleet.gateway.exchange for the front, which
    writes it on to the caller from these callbacks without a task in between."""

    def head_in(self, status: int, keep_alive: bool, headers: list[tuple[bytes, bytes]]) -> None: ...

    def body_in(self, data: bytes) -> None: ...

    def complete(self) -> None: ...

    def lost(self, exc: BaseException) -> None:
        """The connection closed or garbled the answer before its end."""


class Answer:
    """A backend's answer as it arrives, for code that awaits it: the status and headers once
    the head is in, then the body, read whole (:meth:`read`) or chunk by chunk (:meth:`chunks`)."""

    def __init__(self, connection: "Connection", deadline: float) -> None:
        self._connection = connection
        self._deadline = deadline
        self._loop = asyncio.get_running_loop()
        self.head: asyncio.Future[None] = self._loop.create_future()
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.is_complete = False
        self._error: BaseException | None = None

    # -- what the caller reads

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers]

    @property
    def content_type(self) -> str:
        for name, value in self.raw_headers:
            if name.lower() == b"content-type":
                return value.decode("latin-1").split(";", 1)[0].strip().lower()
        return ""

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self):  # noqa: ANN201 - an async iterator of bytes
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it came from the backend; None at its end. Raises
        :class:`BrokenAnswer` if the backend broke off, ``TimeoutError`` past the deadline."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= LOW_WATER:
                    self._paused = False
                    self._connection.resume_reading()
                return chunk
            if self.is_complete:
                return None
            if self._error is not None:
                raise BrokenAnswer(str(self._error) or type(self._error).__name__)
            self._waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, self._deadline - time.monotonic())
            finally:
                self._waiter = None

    def release(self) -> None:
        """Done with it: a complete answer on a kept-alive connection returns it to the pool."""
        if self.is_complete and self.keep_alive and self._error is None:
            self._connection.idle()
        else:
            self._connection.close()

    def close(self) -> None:
        self._connection.close()

    # -- what the connection tells it (Receiver)

    def head_in(self, status: int, keep_alive: bool, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.keep_alive, self.raw_headers = status, keep_alive, headers
        if not self.head.done():
            self.head.set_result(None)

    def body_in(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if not self._paused and self._buffered > HIGH_WATER:
            self._paused = True
            self._connection.pause_reading()
        self._wake()

    def complete(self) -> None:
        self.is_complete = True
        self._wake()

    def lost(self, exc: BaseException) -> None:
        if self.is_complete:
            return
        self._error = exc
        if not self.head.done():
            self.head.set_exception(Unreachable("disconnected", str(exc) or type(exc).__name__))
            self.head.exception()  # retrieved here: a caller that already gave up never reads it
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Unexpected(Exception):
    """Bytes from a backend while no request of ours is on its connection."""


class Connection(asyncio.Protocol):
    """One connection to a backend, carrying one request at a time."""

    def __init__(self, pool: "Pool", address: Address) -> None:
        self._pool = pool
        self.address = address
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._receiver: Receiver | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        self.idle_since = 0.0

    def send(self, request: bytes, receiver: Receiver) -> None:
        """Write ``request``; its answer goes to ``receiver`` as it arrives."""
        assert self._transport is not None
        self._receiver = receiver
        self._headers = []
        self._transport.write(request)

    def start(self, request: bytes, deadline: float) -> Answer:
        """Write ``request``; its answer, to await."""
        answer = Answer(self, deadline)
        self.send(request, answer)
        return answer

    def idle(self) -> None:
        """The answer was read in full: back to the pool for the next request."""
        self._receiver = None
        if self.closed:
            return
        self.idle_since = time.monotonic()
        self._pool.put(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self.closed = True

    def abandon(self) -> None:
        """Close without telling the receiver: it gave the answer up itself."""
        self._receiver = None
        self.close()

    def pause_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:  # raised by a callback of ours
            cause = exc.__context__
            if not isinstance(cause, _Unexpected):  # bytes nobody asked for just close the connection
                log.error("passing on an answer from %s:%s failed", self.address.host, self.address.port,
                          exc_info=cause)
            self._break(BrokenAnswer(f"the gateway failed on this answer: {cause!r}"))
        except httptools.HttpParserError as exc:
            self._break(BrokenAnswer(f"a malformed answer: {exc}"))

    def _break(self, exc: BaseException) -> None:
        receiver, self._receiver = self._receiver, None
        self.close()
        if receiver is not None:
            receiver.lost(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.lost(exc or ConnectionResetError("the backend closed the connection"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._receiver is None:
            raise _Unexpected
        self._receiver.head_in(self._parser.get_status_code(), self._parser.should_keep_alive(), self._headers)

    def on_body(self, body: bytes) -> None:
        if self._receiver is not None:  # None: the receiver closed this connection mid-answer
            self._receiver.body_in(body)

    def on_message_complete(self) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver.complete()


class Pool:
    """Kept-alive connections per backend address; no cap on their number."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        #: by Address.host_header (HOST:PORT), a bytes key: hashing a dataclass runs Python code
        self._idle: dict[bytes, list[Connection]] = {}

    def put(self, connection: Connection) -> None:
        self._idle.setdefault(connection.address.host_header, []).append(connection)

    def take(self, address: Address) -> Connection | None:
        """A kept-alive connection to ``address``, if one is idle (no waiting)."""
        idle = self._idle.get(address.host_header)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_S:
                return connection
            connection.close()
        return None

    async def connection(self, address: Address) -> Connection:
        """An idle connection to ``address``, else a new one. Raises :class:`Unreachable`."""
        connection = self.take(address)
        if connection is not None:
            return connection
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(self, address), address.host, address.port),
                self.connect_timeout_s)
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise Unreachable("connect_timeout", f"no connection to {address.host}:{address.port} within "
                                                 f"{self.connect_timeout_s:g} s") from exc
        except OSError as exc:
            raise Unreachable("refused", f"cannot connect to {address.host}:{address.port}: {exc}") from exc
        return connection

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()


def request_bytes(method: str, target: str, address: Address, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1"), b"host: " + address.host_header]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
