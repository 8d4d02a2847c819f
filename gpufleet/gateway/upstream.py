"""The gateway's client to the backends: one pool of kept-alive connections per gateway
(gpufleet.gateway.wire, raw HTTP/1.1 parsed by httptools).

Timeouts: the connect timeout is short (a replica that does not accept is tried no more and
the request goes to another); one deadline bounds the whole request; there is deliberately
no read (idle) timeout, which would cut a slow first token.

Why not a client library: aiohttp, used before (GPUStack moved its proxy from httpx to aiohttp
for speed, gpustack#1842), was a third or more of the gateway's CPU per request; without it a
gateway process serves 43–71 % more requests a second (docs/gateway.md, Overhead).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from gpufleet.gateway.wire import KEEPALIVE_S, Address, Answer, BrokenAnswer, Pool, Unreachable, request_bytes

_DECODER = json.JSONDecoder()
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*\{')

__all__ = ["KEEPALIVE_S", "Answer", "BrokenAnswer", "Unreachable", "Upstream", "request_headers",
           "response_headers", "split_url", "usage_of"]

#: request headers the backend sees; never the caller's credentials (Authorization, cookies)
FORWARD_REQUEST_HEADERS = ("content-type", "accept")
#: response headers that describe this hop, not the answer
HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server",
                         "proxy-connection", "upgrade", "trailer", "te"})


@lru_cache(maxsize=4096)
def split_url(url: str) -> tuple[Address, str]:
    """``http://host:port/path?query`` → (address, request target); replicas' URLs repeat."""
    scheme, _, rest = url.partition("://")
    netloc, slash, target = rest.partition("/")
    return Address.parse(f"{scheme}://{netloc}"), slash + target if slash else "/"


class Upstream:
    def __init__(self, request_timeout_s: float, connect_timeout_s: float) -> None:
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._pool: Pool | None = None

    async def open(self, url: str, body: bytes, headers: Mapping[str, str], method: str = "POST") -> Answer:
        """Send the request; return once the answer's status and headers arrived. Raises
        :class:`Unreachable` for a failure before any byte, ``TimeoutError`` when the whole
        request's time ran out."""
        deadline = time.monotonic() + self.request_timeout_s
        address, target = split_url(url)
        connection = await self.pool.connection(address)
        answer = connection.start(request_bytes(method, target, address, dict(headers), body), deadline)
        try:
            await asyncio.wait_for(asyncio.shield(answer.head), deadline - time.monotonic())
        except TimeoutError:
            connection.close()
            raise TimeoutError(f"no answer within {self.request_timeout_s:g} s") from None
        except BaseException:
            connection.close()
            raise
        return answer

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(self.connect_timeout_s)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k in FORWARD_REQUEST_HEADERS if (v := headers.get(k)) is not None}


def response_headers(response: Answer) -> dict[str, str]:
    return {k: v for k, v in response.headers if k.lower() not in HOP_HEADERS}


def usage_of(body: bytes) -> dict[str, Any] | None:
    """The last ``"usage": {...}`` object in a JSON answer or the tail of an SSE stream,
    found without parsing the whole body (an embeddings answer can be megabytes): from the
    last ``"usage"`` key, one JSON object is decoded and the rest ignored."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    key = _USAGE_KEY.match(body, at)
    if key is None:  # "usage": null, or not a key
        return None
    start = key.end() - 1
    try:  # usage holds numbers and small objects: 2 KiB is plenty
        usage, _ = _DECODER.raw_decode(body[start:start + 2048].decode("utf-8", "replace"))
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None
