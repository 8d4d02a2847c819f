"""Authentication in a ``gpufleet gateway`` process, which has no database: the server says who a
key is (``GET /v1/whoami``), and the answer is remembered for a few seconds.

Why ask the server rather than copy the key table: a revoked key must stop working everywhere
within the same few seconds as on the server itself (gpufleet.server.auth caches for as long),
and the gateway then holds no key hashes. A caller's first request costs one round trip to the
server; the next ones within the TTL cost a dictionary lookup (keyed by the token's SHA-256, so
tokens are not kept in memory). When the server has authentication off it answers every caller
as the anonymous admin, and so does the gateway.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gpufleet.core.access import Principal
from gpufleet.gateway import errors
from gpufleet.server.auth import token_of

log = logging.getLogger(__name__)

WHOAMI_PATH = "/v1/whoami"
#: the same TTL as the server's own key cache (gpufleet.server.auth.CACHE_TTL_S)
TTL_S = 5.0
#: paths answered without a key: a load balancer's readiness check
OPEN_PATHS = frozenset({"/health"})


@dataclass(frozen=True)
class _Answer:
    status: int
    principal: Principal | None
    message: str
    until: float


class RemoteAuthenticator:
    """Token → the server's answer about it (principal, or the status and message of a refusal)."""

    def __init__(self, server_url: str, timeout_s: float = 10.0) -> None:
        self.url = server_url.rstrip("/") + WHOAMI_PATH
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[str, _Answer] = {}

    def cached(self, digest: bytes) -> _Answer | None:
        """The server's answer about the key of that :func:`key_digest` while it is remembered;
        None: :meth:`check` must ask."""
        hit = self._cache.get(digest)
        return hit if hit is not None and hit.until >= time.monotonic() else None

    async def check(self, token: str | None) -> _Answer:
        digest = key_digest(token)
        hit = self.cached(digest)
        if hit is not None:
            return hit
        answer = await self._ask(token)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = answer
        return answer

    async def _ask(self, token: str | None) -> _Answer:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        until = time.monotonic() + TTL_S
        try:
            async with self._session.get(self.url, headers=headers) as response:
                body: Any = await response.json(content_type=None)
                if response.status == 200:
                    return _Answer(200, Principal.model_validate(body), "", until)
                return _Answer(response.status, None, _message(body), until)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("cannot check a key with the gpufleet server at %s: %s", self.url, exc)
            # not remembered: the next request asks again
            return _Answer(503, None, f"the gateway cannot check keys with the gpufleet server: {exc}", 0.0)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def key_digest(token: str | None) -> bytes:
    """What the cache is keyed by (so that it holds no key in clear)."""
    return hashlib.sha256((token or "").encode()).digest()


def _message(body: Any) -> str:  # noqa: ANN401 - a JSON answer
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("detail"):
            return str(body["detail"])
    return "refused by the gpufleet server"


class RemoteAuthMiddleware:
    """Sets ``request.state.principal`` from the server's answer, or refuses in the OpenAI shape."""

    def __init__(self, app: ASGIApp, authenticator: RemoteAuthenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        answer = await self.auth.check(token_of(scope.get("headers", [])))
        if answer.principal is None:
            await refusal(answer.status, answer.message)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = answer.principal
        await self.app(scope, receive, send)


def refusal(status: int, message: str) -> Response:
    """The answer to a caller the server did not accept, in the OpenAI shape."""
    return errors.refused(status, message).response()
