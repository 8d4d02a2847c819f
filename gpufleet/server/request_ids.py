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
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

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
    @app.middleware("http")
    async def once_per_request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        key = request.headers.get(HEADER)
        if key is None or not is_operation(request.method, request.url.path):
            return await call_next(request)
        if not _KEY.match(key):
            return JSONResponse(status_code=400, content={
                "detail": f"{HEADER} must be 1 to 64 letters, digits or ._:- characters, got {key[:80]!r}"})
        method, path = request.method, request.url.path

        def claim() -> object:
            with state.session() as s:
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
        try:
            response = await call_next(request)
        except BaseException:
            await asyncio.to_thread(_release, state, key)
            raise
        body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]

        def keep() -> None:
            with state.session() as s:
                request_log.answer(s, key, response.status_code, body.decode(errors="replace"))

        await asyncio.to_thread(keep)
        return Response(content=body, status_code=response.status_code, headers=dict(response.headers),
                        media_type=response.media_type)


def _release(state, key: str) -> None:  # noqa: ANN001
    with state.session() as s:
        request_log.release(s, key)
