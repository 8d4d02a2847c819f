"""Hub endpoints and tokens: from the block or the environment, never shown."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from blocks.hub_credentials import HubCredentials
from gpufleet.sources import credentials
from gpufleet.sources.credentials import hub_settings
from gpufleet.sources.hub import FileRequest, HubSettings


def test_block_masks_tokens() -> None:
    block = HubCredentials(huggingface_token="hf_abc123", modelscope_endpoint="http://mirror")
    assert "hf_abc123" not in repr(block) and "hf_abc123" not in str(block.model_dump())
    assert block.huggingface_token is not None and block.huggingface_token.get_secret_value() == "hf_abc123"


def test_settings_and_file_requests_mask_tokens() -> None:
    s = HubSettings(endpoint="http://x", token=SecretStr("tok-999"))
    assert "tok-999" not in repr(s) and s.token_value() == "tok-999"
    req = FileRequest(url="http://x/f", headers={"authorization": "Bearer tok-999"}, size=1)
    assert "tok-999" not in repr(req) and "tok-999" not in str(req)


def test_environment_overrides_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    block = HubCredentials(huggingface_endpoint="http://block-hf/", huggingface_token="from-block",
                           modelscope_endpoint="http://block-ms")
    monkeypatch.setattr(credentials, "_block", lambda: block)
    for var in ("HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_ENDPOINT", "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    hf = hub_settings("huggingface")
    assert (hf.endpoint, hf.token_value()) == ("http://block-hf", "from-block")  # trailing / dropped
    monkeypatch.setenv("HF_ENDPOINT", "http://env-hf")
    monkeypatch.setenv("HF_TOKEN", "from-env")
    hf = hub_settings("huggingface")
    assert (hf.endpoint, hf.token_value()) == ("http://env-hf", "from-env")
    ms = hub_settings("modelscope")
    assert (ms.endpoint, ms.token_value()) == ("http://block-ms", None)


def test_no_prefect_api_means_no_block_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(credentials, "_block_cache", None)
    assert credentials._block() is None  # and no ephemeral Prefect server was started to find out
