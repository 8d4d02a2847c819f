"""Where tasks find the gpufleet server and their key.

URL: GPUFLEET_SERVER_URL, else the `gpufleet-server/default` block. Key: GPUFLEET_API_KEY (the
server exports its controller key for its in-process control worker, a node its own node
credential; gpufleet.server.bootstrap, gpufleet.node.node_auth), else the block's `token`,
else the credentials file (gpufleet.credentials). Never a flow run parameter: those are
stored and shown by Prefect.
"""

from __future__ import annotations

import os
from functools import lru_cache

from gpufleet.client import DEFAULT_SERVER_URL, GpufleetClient
from gpufleet.credentials import API_KEY_ENV


@lru_cache(maxsize=1)
def _block() -> tuple[str, str | None]:
    from blocks.gpufleet_server import BLOCK_NAME, GpufleetServer

    try:
        block = GpufleetServer.load(BLOCK_NAME)
    except ValueError:  # no such block saved
        return DEFAULT_SERVER_URL, None
    token = block.token.get_secret_value() if block.token else None  # type: ignore[union-attr]
    return block.url, token  # type: ignore[union-attr]


def connect() -> GpufleetClient:
    """A client that rides out short server restarts (retries with backoff)."""
    url = os.environ.get("GPUFLEET_SERVER_URL")
    key = os.environ.get(API_KEY_ENV)
    if not url or not key:
        block_url, block_token = _block()
        url = url or block_url
        key = key or block_token
    return GpufleetClient(url, retries=4, api_key=key)
