"""Where hub endpoints and tokens come from.

The Prefect block ``hub-credentials/default`` (see ``blocks/hub_credentials.py``)
when a Prefect API is configured, overridden by the environment
(``HF_ENDPOINT``/``HF_TOKEN``, ``MODELSCOPE_ENDPOINT``/``MODELSCOPE_API_TOKEN``)
so a site can point at a mirror without touching Prefect. The endpoint is always
passed to the clients explicitly: huggingface_hub reads ``HF_ENDPOINT`` only once,
at import time, which makes import order decide the endpoint otherwise.
"""

from __future__ import annotations

import os
import time
from typing import Literal

from pydantic import SecretStr

from gpufleet.prefect_layer import prefect_layer
from gpufleet.sources.hub import HubSettings

HubKind = Literal["huggingface", "modelscope"]
_ENV = {
    "huggingface": ("HF_ENDPOINT", ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")),
    "modelscope": ("MODELSCOPE_ENDPOINT", ("MODELSCOPE_API_TOKEN", "MODELSCOPE_TOKEN")),
}
_BLOCK_TTL_S = 60.0
_block_cache: tuple[float, object | None] | None = None


def _block() -> object | None:
    """The saved block, cached for a minute; None when there is no Prefect API or no block."""
    global _block_cache
    if not os.environ.get("PREFECT_API_URL"):
        return None  # never start an ephemeral Prefect server just to look for a block
    now = time.monotonic()
    if _block_cache and now - _block_cache[0] < _BLOCK_TTL_S:
        return _block_cache[1]
    try:
        block: object | None = prefect_layer().load_hub_credentials()
    except Exception:  # noqa: BLE001 - API down: use the environment
        block = None
    _block_cache = (now, block)
    return block


def hub_settings(kind: HubKind) -> HubSettings:
    endpoint_var, token_vars = _ENV[kind]
    block = _block()
    endpoint = getattr(block, f"{kind}_endpoint", None)
    token = getattr(block, f"{kind}_token", None)
    endpoint = os.environ.get(endpoint_var) or endpoint
    env_token = next((os.environ[v] for v in token_vars if os.environ.get(v)), None)
    return HubSettings(
        endpoint=endpoint.rstrip("/") if endpoint else None,
        token=SecretStr(env_token) if env_token else token,
    )
