"""Authentication of every request, and the coarse authorization by route.

A pure ASGI middleware (no per-request thread hop, no body buffering: the gateway streams
through it) reads the key from ``Authorization: Bearer <key>`` or ``X-API-Key``, turns it
into a :class:`~gpufleet.core.access.Principal` on ``request.state.principal``, and answers
401/403 by route class (gpufleet.server.authz) before any route runs. Routes then ask finer
questions (scope of a deployment, a node's own worker) through gpufleet.server.authz.

Verification is cached in memory for ``CACHE_TTL_S`` seconds per token (its SHA-256, never
the token itself): a key is looked up in the database at most once per TTL, not per request
(GPUStack found per-request verification a bottleneck). Deleting a key through this server
clears the cache at once; another server process notices within the TTL. The token is never
logged: error messages name at most its public prefix.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio

from gpufleet.core.access import ANONYMOUS_ADMIN, Principal
from gpufleet.server import authz
from gpufleet.store import keys as key_store
from gpufleet.store.models import utcnow

log = logging.getLogger(__name__)

CACHE_TTL_S = 5.0
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class _Cached:
    verified: key_store.Verified | None
    until: float


class Authenticator:
    """Token → verified key, with the cache. ``enabled=False``: everyone is ANONYMOUS_ADMIN."""

    def __init__(self, state: Any, enabled: bool = True) -> None:  # noqa: ANN401 - ServerState
        self.state = state
        self.enabled = enabled
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def forget_all(self) -> None:
        """A key was deleted here: the next request of every key is checked in the database."""
        with self._lock:
            self._cache.clear()

    def cached(self, token: str) -> tuple[bool, key_store.Verified | None]:
        digest = key_store.hash_token(token)
        with self._lock:
            hit = self._cache.get(digest)
        if hit is None or hit.until < time.monotonic():
            return False, None
        return True, hit.verified

    def verify(self, token: str) -> key_store.Verified | None:
        """Check in the database (and remember for the TTL); marks the key used at most once a minute."""
        now = utcnow()
        with self.state.session() as s:
            verified = key_store.verify(s, token, now)
            if verified is not None:
                row = s.get(key_store.ApiKeyRow, verified.key_id)
                last = key_store._aware(row.last_used_at) if row is not None else None
                if row is not None and (last is None or now - last >= key_store.TOUCH_EVERY):
                    row.last_used_at = now
        until = time.monotonic() + CACHE_TTL_S
        if verified is not None and verified.expires_at is not None:
            # an expiring key is not trusted from the cache past its expiry
            until = min(until, time.monotonic() + max(0.0, (verified.expires_at - now).total_seconds()))
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[key_store.hash_token(token)] = _Cached(verified, until)
        return verified


def token_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>``, else ``X-API-Key``."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                return rest.strip()
        elif name == b"x-api-key" and value:
            api_key = value.decode("latin-1").strip()
    return api_key


class AuthMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.auth.enabled:
            state["principal"] = ANONYMOUS_ADMIN
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        rule = authz.rule_for(method, path)
        if rule.kind == authz.OPEN:
            await self.app(scope, receive, send)
            return
        token = token_of(scope.get("headers", []))
        verified = await self._verify(token) if token else None
        if verified is None:
            what = ("missing API key: send `Authorization: Bearer <key>` (or `X-API-Key: <key>`); "
                    "`gpufleet keys create` makes one, see docs/auth.md") if not token else (
                f"invalid, expired or revoked API key{_named(token)}")
            await _refuse(send, 401, what, rule.openai, "invalid_api_key")
            return
        principal = verified.principal
        if rule.kind == authz.JOIN:
            if principal is not None:  # a user or node key cannot register nodes: only a join token
                await _refuse(send, 403, "this route takes a join token (printed by `gpufleet server`/`up`)",
                              rule.openai, "permission_denied")
                return
            state["join_key_id"] = verified.key_id
            await self.app(scope, receive, send)
            return
        if principal is None:
            await _refuse(send, 403, "a join token only registers a node (POST /v1/nodes/join)",
                          rule.openai, "permission_denied")
            return
        refusal = authz.refuse(rule, principal, path)
        if refusal is not None:
            await _refuse(send, 403, refusal, rule.openai, "permission_denied")
            return
        state["principal"] = principal
        await self.app(scope, receive, send)

    async def _verify(self, token: str) -> key_store.Verified | None:
        hit, verified = self.auth.cached(token)
        if hit:
            return verified
        return await anyio.to_thread.run_sync(self.auth.verify, token)


def _named(token: str) -> str:
    prefix = key_store.prefix_of(token)
    return f" (gf_{prefix}…)" if prefix else ""


async def _refuse(send: Send, status: int, message: str, openai: bool, code: str) -> None:
    if openai:
        kind = "authentication_error" if status == 401 else "permission_error"
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "code": code}}
    else:
        body = {"detail": message}
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="gpufleet"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def principal_of(request: Any) -> Principal:  # noqa: ANN401 - a Starlette Request
    """The caller of a request that passed the middleware (ANONYMOUS_ADMIN with auth off).
    A route that asks on an open path gets 401 rather than a guess."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        from fastapi import HTTPException

        raise HTTPException(401, "this route needs an API key")
    return principal
