"""Byte-range reads of a (possibly remote, possibly huge) file, counted.

Header parsers need a prefix of a file; a 70 GB GGUF must cost a few MiB. A
:class:`RangeReader` reads ``[start, end)`` from a local file or with an HTTP
``Range`` request, and counts requests and bytes so the benchmark (and tests)
can hold us to "≤ 3 requests, ≤ header + 4 MiB".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Protocol, TypeVar

import httpx

from gpufleet.sources.errors import FileNotInRepo, GatedRepo, HubUnavailable, ModelSourceError

RETRIES = 4  # attempts after the first
BACKOFF_S = 0.25  # 0.25, 0.5, 1, 2 s: about 4 s in all before giving up


@dataclass
class ReadStats:
    requests: int = 0
    bytes: int = 0


class RangeReader(Protocol):
    name: str
    size: int
    stats: ReadStats

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``; ``end`` is clipped to the file size."""


class LocalRangeReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.size = path.stat().st_size
        self.stats = ReadStats()

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        with self.path.open("rb") as f:
            f.seek(start)
            data = f.read(max(0, end - start))
        self.stats.requests += 1
        self.stats.bytes += len(data)
        return data


_client: httpx.Client | None = None


def http_client() -> httpx.Client:
    """One pooled client for range reads and pulls (keep-alive matters: a
    sharded model's headers are many small requests to one host)."""
    global _client
    if _client is None:
        _client = httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, connect=10.0))
    return _client


class HttpRangeReader:
    """Range GETs against a resolved file URL with the hub client's auth headers."""

    def __init__(self, client: httpx.Client, url: str, headers: dict[str, str], size: int, name: str) -> None:
        self.client, self.url, self.headers = client, url, headers
        self.size, self.name = size, name
        self.stats = ReadStats()

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if end <= start:
            return b""
        headers = {**self.headers, "Range": f"bytes={start}-{end - 1}"}
        resp = with_backoff(lambda: get_checked(self.client, self.url, headers, self.name), self.name)
        data = resp.content
        self.stats.requests += 1
        self.stats.bytes += len(data)
        if resp.status_code == 200:  # server ignored Range: keep only what was asked
            data = data[start:end]
        if len(data) != end - start:
            raise HubUnavailable(f"{self.name}: asked for {end - start} bytes at {start}, got {len(data)}")
        return data


T = TypeVar("T")


def with_backoff(call: Callable[[], T], what: str, retries: int = RETRIES, backoff: float | None = None) -> T:
    """Retry `call` while it raises :class:`HubUnavailable` (transport errors,
    5xx, 429), sleeping 0.25, 0.5, 1, 2 s; then re-raise naming `what`."""
    backoff = BACKOFF_S if backoff is None else backoff
    for attempt in range(retries + 1):
        try:
            return call()
        except HubUnavailable as exc:
            if attempt == retries:
                raise HubUnavailable(f"{exc} (gave up after {retries + 1} attempts)") from exc
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def call_client(call: Callable[[], T], translate: Callable[[Callable[[], T], str], T], what: str,
                endpoint: str, retry: bool = False) -> T:
    """One hub-client call with the client's errors `translate`d to ours. The
    clients' own calls already retry transport errors and 5xx with backoff
    (huggingface_hub: 5 retries, 1-8 s; modelscope_hub: its API retries), so only
    calls the client does not retry (`retry=True`) get :func:`with_backoff`."""
    try:
        if not retry:
            return translate(call, what)
        return with_backoff(lambda: translate(call, what), what)
    except HubUnavailable as exc:
        raise HubUnavailable(f"{exc} (hub endpoint {endpoint}, after retries)") from exc


def get_checked(client: httpx.Client, url: str, headers: dict[str, str], what: str) -> httpx.Response:
    """GET with our error classes: transport errors/5xx/429 are transient."""
    try:
        resp = client.get(url, headers=headers)
    except httpx.TransportError as exc:
        raise HubUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    if resp.status_code >= 500 or resp.status_code == 429:
        raise HubUnavailable(f"{what}: hub answered HTTP {resp.status_code}")
    check_status(resp, what)
    return resp


def check_status(resp: httpx.Response, what: str) -> None:
    if resp.status_code in (200, 206):
        return
    if resp.status_code in (401, 403):
        raise GatedRepo(f"{what}: access refused (HTTP {resp.status_code}); the repository is gated or "
                        "private: accept its terms on the hub and give a token (hub credentials block)")
    if resp.status_code == 404:
        raise FileNotInRepo(f"{what}: not found on the hub (HTTP 404)")
    raise ModelSourceError(f"{what}: unexpected HTTP {resp.status_code} from the hub")
