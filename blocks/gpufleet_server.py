"""Prefect block: how flows reach the gpufleet server.

gpufleet's own workers export GPUFLEET_SERVER_URL, so flows they run need no
block. A flow run by any other Prefect worker (or from a notebook) loads the
block named `default` instead; save one with:

    GpufleetServer(url="http://control-host:8470").save("default")
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

BLOCK_NAME = "default"


class GpufleetServer(Block):
    _block_type_name = "gpufleet server"
    _block_type_slug = "gpufleet-server"
    _description = "URL (and optional token) of a gpufleet server, for gpufleet's flows."

    url: str = Field(default="http://127.0.0.1:8470", description="base URL of the gpufleet REST API")
    token: SecretStr | None = Field(default=None, description="API token, when the server requires one")
