"""What authentication costs a request: the auth middleware alone, driven as ASGI (no HTTP, no
network), with a cached key, against the same app with authentication off. The gateway's
budget is < 0.5 ms added at p50 (issue 14); this is the part auth takes of it.

    .venv/bin/python benchmarks/auth_overhead.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from gpufleet.core.access import Role
from gpufleet.server.auth import AuthMiddleware, Authenticator
from gpufleet.server.app import ServerState
from gpufleet.store import keys as key_store

N = 20000


async def endpoint(scope, receive, send) -> None:  # noqa: ANN001 - a bare ASGI app answering 200
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def measure(app, headers: list[tuple[bytes, bytes]]) -> list[float]:  # noqa: ANN001
    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(_: dict) -> None:
        return None

    times = []
    for _ in range(N):
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}
        start = time.perf_counter()
        await app(scope, receive, send)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = ServerState(f"sqlite:///{Path(tmp) / 'db.sqlite'}", lambda *_: "")
        with state.session() as s:
            token = key_store.create_key(s, "bench", Role.INFERENCE.value).token
        on = AuthMiddleware(endpoint, Authenticator(state, enabled=True))
        off = AuthMiddleware(endpoint, Authenticator(state, enabled=False))
        headers = [(b"authorization", f"Bearer {token}".encode())]
        asyncio.run(measure(on, headers))  # warm: the first call verifies in the database
        with_auth = asyncio.run(measure(on, headers))
        without = asyncio.run(measure(off, headers))
        state.engine.dispose()

    def p(values: list[float], q: float) -> float:
        return sorted(values)[int(q * (len(values) - 1))] * 1e6

    print(f"{N} requests through the middleware alone (µs)")
    print(f"  auth on, cached key: p50 {p(with_auth, 0.5):6.1f}  p99 {p(with_auth, 0.99):6.1f}  "
          f"mean {statistics.mean(with_auth) * 1e6:6.1f}")
    print(f"  auth off:            p50 {p(without, 0.5):6.1f}  p99 {p(without, 0.99):6.1f}  "
          f"mean {statistics.mean(without) * 1e6:6.1f}")
    print(f"  added by auth: p50 {p(with_auth, 0.5) - p(without, 0.5):.1f} µs (budget of the gateway: 500 µs)")


if __name__ == "__main__":
    main()
