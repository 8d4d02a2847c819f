"""Prefect block: endpoints and tokens of the model hubs (Hugging Face, ModelScope).

Tokens are ``SecretStr``: Prefect stores them encrypted and shows them masked,
and gpufleet never prints them, logs them or puts them in state messages. Save one
(the server and nodes load the block named ``default``):

    HubCredentials(huggingface_token="hf_...", modelscope_endpoint="https://mirror.example").save("default")

Environment variables (``HF_ENDPOINT``, ``HF_TOKEN``, ``MODELSCOPE_ENDPOINT``,
``MODELSCOPE_API_TOKEN``) override the block's values.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

BLOCK_NAME = "default"


class HubCredentials(Block):
    _block_type_name = "gpufleet hub credentials"
    _block_type_slug = "hub-credentials"
    _description = "Tokens and custom endpoints for Hugging Face and ModelScope, used to read and pull models."

    huggingface_endpoint: str | None = Field(default=None, description="e.g. https://hf-mirror.com; default huggingface.co")
    huggingface_token: SecretStr | None = Field(default=None, description="token for gated or private repositories")
    modelscope_endpoint: str | None = Field(default=None, description="default https://www.modelscope.cn")
    modelscope_token: SecretStr | None = Field(default=None, description="ModelScope SDK token")
