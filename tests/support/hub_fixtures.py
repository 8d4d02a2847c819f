"""pytest fixtures: a running fake hub, with both clients pointed at it.

Import the fixtures into a test module (``from tests.support.hub_fixtures import
fake_hub  # noqa: F401``). The endpoint reaches the clients through
gpufleet's own settings (environment → :func:`gpufleet.sources.credentials.hub_settings`),
which passes it explicitly, so the import order of huggingface_hub does not matter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpufleet.sources import range_reader
from tests.support.fake_hub import FakeHub

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "MODELSCOPE_TOKEN")


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
    # No saved tokens or cookies from the machine running the tests.
    home = tmp_path_factory.mktemp("hubhome")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(home / "ms"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for var in TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(range_reader, "BACKOFF_S", 0.01)  # retries stay real, just quick
    try:
        yield hub
    finally:
        hub.stop()
