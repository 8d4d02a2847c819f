"""Where tasks find the gpufleet server: GPUFLEET_SERVER_URL, else the `gpufleet-server/default` block."""

from __future__ import annotations

import os
from functools import lru_cache

from gpufleet.client import DEFAULT_SERVER_URL, GpufleetClient


@lru_cache(maxsize=1)
def _block_url() -> str:
    from blocks.gpufleet_server import BLOCK_NAME, GpufleetServer

    try:
        return GpufleetServer.load(BLOCK_NAME).url  # type: ignore[union-attr]
    except ValueError:  # no such block saved
        return DEFAULT_SERVER_URL


def connect() -> GpufleetClient:
    """A client that rides out short server restarts (retries with backoff)."""
    url = os.environ.get("GPUFLEET_SERVER_URL") or _block_url()
    return GpufleetClient(url, retries=4)
