"""Operations safe to retry: the server applies a request id once and answers retries as the first time.

Why: see gpufleet.store.request_log. This is the HTTP side: for the public operations (deploy,
scale, edit, delete, delete or restart an instance, install a backend) a request carrying an
`Idempotency-Key` header is applied at most once; a retry gets the first answer with
`Idempotent-Replayed: true`, or 409 with `Retry-After` while the first is still being applied.
Internal routes (state reports, heartbeats) are idempotent by themselves and are not logged.
"""

from __future__ import annotations

import asyncio
import re
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpufleet.store import request_log

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: (method, path) of the operations whose request ids are kept
_OPERATIONS = [
    ("POST", re.compile(r"^/v1/deployments$")),
    ("PATCH", re.compile(r"^/v1/deployments/[^/]+$")),
    ("DELETE", re.compile(r"^/v1/deployments/[^/]+$")),
    ("POST", re.compile(r"^/v1/deployments/[^/]+/scale$")),
    ("DELETE", re.compile(r"^/v1/instances/\d+$")),
    ("POST", re.compile(r"^/v1/instances/\d+/restart$")),
    ("POST", re.compile(r"^/v1/workers/[^/]+/backends$")),
]


def is_operation(method: str, path: str) -> bool:
    return any(method == m and pattern.match(path) for m, pattern in _OPERATIONS)


def add_request_ids(app: FastAPI, state) -> None:  # noqa: ANN001 - ServerState (its module imports this one)
    """A plain ASGI middleware, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    runs every request (the many that carry no request id included) through an extra task and
    memory stream, which cost about as much as a one-replica placement itself."""
    app.add_middleware(_RequestIds, state=state)


class _RequestIds:
    def __init__(self, app: ASGIApp, state) -> None:  # noqa: ANN001
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        key = Headers(scope=scope).get(HEADER)
        method, path = scope["method"], scope["path"]
        if key is None or not is_operation(method, path):
            return await self.app(scope, receive, send)
        if not _KEY.match(key):
            return await JSONResponse(status_code=400, content={
                "detail": f"{HEADER} must be 1 to 64 letters, digits or ._:- characters, got {key[:80]!r}"
            })(scope, receive, send)
        early = await self._claim(key, method, path)
        if early is not None:
            return await early(scope, receive, send)
        messages: list[Message] = []

        async def keep_message(message: Message) -> None:
            messages.append(message)  # held back until the answer is stored

        try:
            await self.app(scope, receive, keep_message)
        except BaseException:
            await asyncio.to_thread(_release, self.state, key)
            raise
        start = next(m for m in messages if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        await asyncio.to_thread(_answer, self.state, key, start["status"], body.decode(errors="replace"))
        for message in messages:
            await send(message)

    async def _claim(self, key: str, method: str, path: str) -> Response | None:
        """None when this request is the first with its id; else the answer to give instead."""

        def claim() -> object:
            with self.state.session() as s:
                return request_log.claim(s, key, method, path)

        outcome = await asyncio.to_thread(claim)
        if isinstance(outcome, request_log.Answered):
            return Response(content=outcome.body, status_code=outcome.status, media_type="application/json",
                            headers={REPLAYED: "true"})
        if isinstance(outcome, request_log.InProgress):
            return JSONResponse(status_code=409, headers={"Retry-After": "1"}, content={
                "detail": f"request {key} is still being applied; retry it (with the same {HEADER}) in a moment"})
        if isinstance(outcome, request_log.OtherRequest):
            return JSONResponse(status_code=422, content={
                "detail": f"{HEADER} {key} was already used for {outcome.method} {outcome.path}; "
                          "send a new id with every new request"})
        return None


def _answer(state, key: str, status: int, body: str) -> None:  # noqa: ANN001
    with state.session() as s:
        request_log.answer(s, key, status, body)


def _release(state, key: str) -> None:  # noqa: ANN001
    with state.session() as s:
        request_log.release(s, key)
