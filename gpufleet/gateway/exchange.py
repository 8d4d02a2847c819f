"""One caller's request through a ``gpufleet gateway`` front, passed on from callback to callback.

Why not a coroutine per request, as the gateway inside the gpufleet server runs
(gpufleet.gateway.routes): at thousands of requests a second on cores shared with the
backends, a task, its futures and a Starlette response per request were most of what the
front cost (docs/gateway.md, Overhead). Here, when the caller's key is in the cache, the
routing table is fresh and a kept-alive connection to the chosen replica is idle — nearly
always under load — the request is written to the backend from the caller's parser
callback, and the answer is written to the caller from the backend's parser callbacks: no
task and no future on the way. Anything else (a key to ask the server about, a table to
read, a replica to wait for, a connection to open) runs as one task that awaits the same
steps (gpufleet.gateway.routes.Gateway) and hands over to the callbacks once the request is
sent.

What the gateway promises holds on both ways: least-outstanding balancing; a replica that
fails before the first byte of its answer is counted and another is tried; the wait for a
replica, then 503; one deadline for the whole request and no idle timeout (504 before the
answer began; a stream past it is cut); 502 for a non-streamed answer the backend broke
off (it is passed on whole, so that a cut shows as an error, not as a short body); streams
passed on chunk by chunk as the backend writes them, with back-pressure (the backend is not
read while the caller's socket is full); and the same metrics, through the same calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import lru_cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol

from gpufleet.gateway import errors
from gpufleet.gateway.routes import STREAM_TAIL_BYTES
from gpufleet.gateway.upstream import HOP_HEADERS, split_url, usage_of
from gpufleet.gateway.wire import Address, Connection, Unreachable

if TYPE_CHECKING:
    from gpufleet.gateway.remote_auth import RemoteAuthenticator
    from gpufleet.gateway.routes import Gateway, _Finish
    from gpufleet.gateway.table import Replica

log = logging.getLogger(__name__)

_HOP = frozenset(h.encode() for h in HOP_HEADERS)
_EVENT_STREAM = b"text/event-stream"
_LAST_CHUNK = b"0\r\n\r\n"


class Deadlines:
    """When each request under way must end, checked by one timer every :data:`TICK_S` rather
    than by a timer per request: a dictionary entry set and popped costs less than a timer
    handle made and cancelled for each of thousands of requests a second, nearly all of which
    end long before their deadline. A request that runs out ends at most a tick late."""

    TICK_S = 0.1

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._until: dict[Exchange, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def set(self, exchange: "Exchange", seconds: float) -> None:
        self._until[exchange] = self._loop.time() + seconds
        if self._timer is None:
            self._timer = self._loop.call_later(self.TICK_S, self._tick)

    def clear(self, exchange: "Exchange") -> None:
        self._until.pop(exchange, None)

    def _tick(self) -> None:
        now = self._loop.time()
        for exchange in [e for e, until in self._until.items() if until <= now]:
            del self._until[exchange]
            exchange.expire()
        self._timer = self._loop.call_later(self.TICK_S, self._tick) if self._until else None


class Caller(Protocol):
    """What an exchange needs of the caller's connection (gpufleet.gateway.front)."""

    transport: asyncio.Transport | None
    paused: bool
    loop: asyncio.AbstractEventLoop
    deadlines: Deadlines

    def finished(self, keep_alive: bool) -> None:
        """The answer was written in full; the connection serves the next request or closes."""

    def abort(self) -> None:
        """The answer cannot be completed (a stream cut): close the connection."""


class Request(Protocol):
    method: bytes
    path: bytes
    query: bytes
    body: bytes
    keep_alive: bool
    http11: bool
    token: str | None
    digest: bytes  # remote_auth.key_digest(token)
    forwarded: bytes  # the request headers the backend sees, as they go on the wire


class Exchange:
    """One request: chosen a replica, sent, answered — a :class:`gpufleet.gateway.wire.Receiver`."""

    __slots__ = ("caller", "gateway", "authenticator", "request", "started", "failures",
                 "replica", "finish", "connection", "reuse", "task", "status", "headers", "streaming",
                 "parts", "tail", "ended")

    def __init__(self, caller: Caller, gateway: Gateway, authenticator: RemoteAuthenticator,
                 request: Request) -> None:
        self.caller, self.gateway, self.authenticator, self.request = caller, gateway, authenticator, request
        self.started = time.perf_counter()
        self.failures: dict[int, int] = {}
        self.replica: Replica | None = None
        self.finish: _Finish | None = None
        self.connection: Connection | None = None
        self.reuse = True  # the backend keeps the connection open after this answer
        self.task: asyncio.Task[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.streaming = False
        self.parts: list[bytes] = []
        self.tail = b""
        self.ended = False

    # ------------------------------------------------------------------ getting it to a replica

    def start(self) -> None:
        """Send the request now if nothing needs waiting for, else in a task that awaits what
        is missing (and no step is taken twice: a replica chosen here is the one connected to)."""
        checked = self.authenticator.cached(self.request.digest)
        if checked is None:
            self._later(None, None)
            return
        try:
            if checked.principal is None:
                raise errors.refused(checked.status, checked.message)
            model = self.gateway.admit(checked.principal, self.request.body)
        except errors.GatewayError as exc:
            self._answer_error(exc)
            return
        replica = self.gateway.replica_now(model, self.failures)
        if replica is None:
            self._later(model, None)
            return
        address, target = _target(replica.url + self._url_tail())
        connection = self.gateway.upstream.pool.take(address)
        if connection is None:
            self._later(model, replica)
            return
        self._send(replica, connection, address, target)

    def _later(self, model: str | None, replica: Replica | None) -> None:
        self.task = self.caller.loop.create_task(self._send_later(model, replica))

    async def _send_later(self, model: str | None, replica: Replica | None) -> None:
        # the wait for a replica counts from the request's arrival
        wait_until = time.monotonic() + self.gateway.settings.wait_s - (time.perf_counter() - self.started)
        try:
            if model is None:
                checked = await self.authenticator.check(self.request.token)
                if checked.principal is None:
                    raise errors.refused(checked.status, checked.message)
                model = self.gateway.admit(checked.principal, self.request.body)
            while True:
                if replica is None:
                    replica = await self.gateway.replica_for(model, self.failures, wait_until)
                address, target = _target(replica.url + self._url_tail())
                try:
                    connection = await self.gateway.upstream.pool.connection(address)
                except Unreachable as exc:
                    self.gateway.unreachable(replica, exc, self.failures)
                    replica = None
                    continue
                break
        except errors.GatewayError as exc:
            self._answer_error(exc)
            return
        except Exception:  # noqa: BLE001 - a fault of the gateway's: answered 500 and logged, not a hung caller
            log.exception("the gateway failed to pass on a request to %s", self.request.path.decode("latin-1"))
            self._answer_error(errors.internal())
            return
        if self.ended:  # the caller left while the connection was opened: a spare for the pool
            connection.idle()
            return
        self._send(replica, connection, address, target)

    def _url_tail(self) -> str:
        request = self.request
        return (request.path + b"?" + request.query if request.query else request.path).decode("latin-1")

    def _send(self, replica: Replica, connection: Connection, address: Address, target: bytes) -> None:
        self.replica, self.connection = replica, connection
        self.finish = self.gateway.begin(replica, self.started)
        self.caller.deadlines.set(self, self.gateway.upstream.request_timeout_s)
        body = self.request.body
        connection.send(b"POST %s HTTP/1.1\r\nhost: %s\r\n%scontent-length: %d\r\n\r\n%s" % (
            target, address.host_header, self.request.forwarded, len(body), body), self)

    # ------------------------------------------------------------------ the answer (wire.Receiver)

    def head_in(self, status: int, keep_alive: bool, headers: list[tuple[bytes, bytes]]) -> None:
        assert self.replica is not None
        self.status, self.headers, self.reuse = status, headers, keep_alive
        self.gateway.headed(self.replica, self.request.path.decode("latin-1"), status)
        for name, value in headers:
            if value.startswith(_EVENT_STREAM) and name.lower() == b"content-type":
                self.streaming = True
        if self.streaming:
            self._write(self._head(None))
            if self.caller.paused:
                self.caller_paused()

    def body_in(self, data: bytes) -> None:
        if not self.streaming:
            self.parts.append(data)
            return
        assert self.finish is not None
        if self.finish.first_byte is None:
            self.finish.first()
        self.tail = (self.tail + data)[-STREAM_TAIL_BYTES:]
        self._write(b"%x\r\n%s\r\n" % (len(data), data) if self.request.http11 else data)

    def complete(self) -> None:
        assert self.finish is not None
        self.caller.deadlines.clear(self)
        connection, self.connection = self.connection, None
        if connection is not None:
            if self.reuse:
                connection.idle()
            else:
                connection.abandon()
        if self.streaming:
            if self.request.http11:
                self._write(_LAST_CHUNK)
            usage = usage_of(self.tail)
        else:
            body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
            self._write(self._head(len(body)) + body)
            usage = usage_of(body) if self.status < 300 else None
        self.finish(usage)
        self._end(self._keep_alive())

    def lost(self, exc: BaseException) -> None:
        self.caller.deadlines.clear(self)
        self.connection = None
        if self.ended:
            return
        assert self.replica is not None and self.finish is not None
        if self.status == 0:  # before a byte of the answer: another replica may take it
            self.finish.abandon()
            self.gateway.unreachable(self.replica, Unreachable("disconnected", str(exc) or type(exc).__name__),
                                     self.failures)
            self._reset()
            self.start()
            return
        self.gateway.count_error(self.replica.deployment, "upstream_cut")
        self._broke(errors.upstream_failed(self.replica.deployment,
                                           f"replica {self.replica.name} broke off its answer: {exc}"))

    def expire(self) -> None:
        """The request's time ran out (:class:`Deadlines`)."""
        if self.ended:
            return
        assert self.replica is not None and self.finish is not None
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.abandon()
        replica = self.replica
        self.gateway.count_error(replica.deployment, "upstream_timeout")
        timeout = errors.upstream_timeout(replica.deployment, replica.name, self.gateway.upstream.request_timeout_s)
        if self.status == 0:
            self.finish.abandon()
            self._answer_error(timeout)
        else:
            self._broke(timeout)

    def _broke(self, error: errors.GatewayError) -> None:
        """The answer began and will not end: an error in its place if nothing was written yet,
        else the caller's connection is closed (a stream cut short)."""
        assert self.finish is not None and self.replica is not None
        self.finish(None, failed=True)
        if not self.streaming:
            self._answer_error(error)
            return
        log.warning("stream from replica %s of %s broke off: %s", self.replica.name, self.replica.deployment,
                    error.message)
        self.ended = True
        self.caller.abort()

    def _reset(self) -> None:
        self.replica = self.finish = None
        self.reuse = True
        self.status, self.headers, self.streaming, self.parts, self.tail = 0, [], False, [], b""

    # ------------------------------------------------------------------ the caller's side

    def caller_paused(self) -> None:
        """The caller's socket is full: stop reading a stream from the backend until it drains."""
        if self.streaming and self.connection is not None:
            self.connection.pause_reading()

    def caller_resumed(self) -> None:
        if self.streaming and self.connection is not None:
            self.connection.resume_reading()

    def abandon(self) -> None:
        """The caller left: the request ends, and its backend connection with it (a generation
        nobody reads is not left running)."""
        if self.ended:
            return
        self.ended = True
        self.caller.deadlines.clear(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.abandon()
        if self.finish is not None:
            if self.status == 0:
                self.finish.abandon()
            else:
                self.finish(None, failed=True)

    def _keep_alive(self) -> bool:
        return self.request.keep_alive and (self.request.http11 or not self.streaming)

    def _head(self, length: int | None) -> bytes:
        lines = [status_line(self.status)]
        for name, value in self.headers:
            if name.lower() not in _HOP:
                lines.append(name + b": " + value + b"\r\n")
        if length is not None:
            lines.append(b"content-length: %d\r\n" % length)
        elif self.request.http11:
            lines.append(b"transfer-encoding: chunked\r\n")
        if not self._keep_alive():
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _answer_error(self, error: errors.GatewayError) -> None:
        if self.ended:
            return
        self._write(simple_answer(error.status, error.headers(), error.body(), self.request.keep_alive))
        self._end(self.request.keep_alive)

    def _write(self, data: bytes) -> None:
        transport = self.caller.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _end(self, keep_alive: bool) -> None:
        self.ended = True
        self.caller.finished(keep_alive)



@lru_cache(maxsize=4096)
def _target(url: str) -> tuple[Address, bytes]:
    address, target = split_url(url)
    return address, target.encode("latin-1")


@lru_cache(maxsize=64)
def status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def simple_answer(status: int, headers: dict[str, str], body: bytes, keep_alive: bool) -> bytes:
    """A whole JSON answer of the gateway's own, ready to write."""
    lines = [status_line(status), b"content-type: application/json\r\n"]
    lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()]
    lines.append(b"content-length: %d\r\n" % len(body))
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    return b"".join(lines) + b"\r\n" + body


__all__ = ["Caller", "Deadlines", "Exchange", "simple_answer", "status_line"]
