"""The gateway's HTTP client to the backends: aiohttp, one pooled session per gateway.

Why aiohttp and not httpx (which the rest of gpufleet uses): this is the hot path, a
request in and a request out for every call at hundreds of concurrent streams. GPUStack's
proxy lost two thirds of its throughput at 256 concurrent requests on httpx and got it back
(−2 % vs direct) by moving to aiohttp (gpustack#1842, PR #2178); measured here too
(benchmarks/gateway_overhead.py, docs/gateway.md). aiohttp's connection pool keeps
connections to every backend open between requests, and its streamed body is handed on
chunk by chunk as it arrives.

Timeouts: ``sock_connect`` is short (a replica that does not accept is tried no more and the
request goes to another); ``total`` bounds the whole request; there is deliberately no read
(idle) timeout, which would cut a slow first token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

#: idle pooled connections are closed after this, under the backends' own 5 s keep-alive
KEEPALIVE_S = 4.0
#: request headers the backend sees; never the caller's credentials (Authorization, cookies)
FORWARD_REQUEST_HEADERS = ("content-type", "accept")
#: response headers that describe this hop, not the answer
HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server",
                         "proxy-connection", "upgrade", "trailer", "te"})


class Unreachable(Exception):
    """The replica failed before sending a byte of its answer: safe to try another.
    ``reason``: refused, disconnected or connect_timeout (the retries metric's label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Upstream:
    def __init__(self, request_timeout_s: float, connect_timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
        self.request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """Created on first use, inside the serving event loop (aiohttp binds a session to one)."""
        if self._session is None or self._session.closed:
            # limit 0: no cap on connections. An idle connection is closed after 4 s, before the
            # backend closes it (llama.cpp's and uvicorn's keep-alive is 5 s): reusing one the
            # backend just closed fails the request's first try
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  auto_decompress=False, skip_auto_headers=("User-Agent",))
        return self._session

    async def open(self, url: str, body: bytes, headers: Mapping[str, str], method: str = "POST") -> aiohttp.ClientResponse:
        """Send the request; return once the answer's status and headers arrived. Raises
        :class:`Unreachable` for a failure before any byte, ``TimeoutError`` when the whole
        request's time ran out."""
        try:
            return await self.session().request(method, url, data=body or None, headers=headers)
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable host, DNS
            raise Unreachable("refused", str(exc)) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise Unreachable("connect_timeout", str(exc)) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise Unreachable("disconnected", str(exc) or type(exc).__name__) from exc
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer within {self.request_timeout_s:g} s") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k in FORWARD_REQUEST_HEADERS if (v := headers.get(k)) is not None}


def response_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}


def usage_of(body: bytes) -> dict[str, Any] | None:
    """The last ``"usage": {...}`` object in a JSON answer or the tail of an SSE stream,
    found without parsing the whole body (an embeddings answer can be megabytes)."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    start = body.find(b"{", at)
    if start < 0:
        return None
    depth, end = 0, -1
    for i in range(start, min(len(body), start + 2048)):  # usage holds numbers and small objects
        c = body[i]
        if c == 0x7B:  # {
            depth += 1
        elif c == 0x7D:  # }
            depth -= 1
            if depth == 0:
                end = i
                break
    if end < 0:
        return None
    try:
        usage = json.loads(body[start:end + 1])
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None
