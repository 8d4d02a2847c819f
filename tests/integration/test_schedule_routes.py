"""The schedule routes refuse bad input before they reach Prefect (issue 18): an unknown
deployment, a malformed cron, an unknown time zone, replicas < 0, neither or both of
replicas / restart — each a clear 4xx, and no schedule written. The real app and store;
the rules' Prefect side is the e2e suite's (tests/e2e/test_prefect_native.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gpufleet.server.app import create_app


@pytest.fixture
def api(tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # authentication is not the subject here (tests/integration/test_auth.py)
    app = create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=lambda op, params: "", run_controller=False,
                     auth=False)
    with TestClient(app) as client:
        r = client.post("/v1/deployments", json={"name": "tiny", "replicas": 1, "source": {"local_path": str(tiny_gguf)}})
        assert r.status_code == 202, r.text
        yield client


@pytest.mark.parametrize("body,status,words", [
    ({"cron": "61 * * * *", "replicas": 2}, 400, "Invalid cron string"),
    ({"cron": "every morning", "replicas": 2}, 400, "Invalid cron string"),
    ({"cron": "0 8 * * *", "replicas": 2, "timezone": "Mars/Olympus"}, 400, "Invalid timezone"),
    ({"cron": "0 8 * * *", "replicas": -1}, 422, "greater than or equal to 0"),
    ({"cron": "0 8 * * *"}, 422, "either replicas"),
    ({"cron": "0 8 * * *", "replicas": 2, "restart": True}, 422, "either replicas"),
])
def test_bad_input_is_refused_before_prefect(api: TestClient, body: dict[str, Any], status: int, words: str) -> None:
    r = api.post("/v1/deployments/tiny/schedules", json=body)
    assert r.status_code == status, r.text
    assert words in r.text


def test_an_unknown_deployment_is_404(api: TestClient) -> None:
    r = api.post("/v1/deployments/nope/schedules", json={"cron": "0 8 * * *", "replicas": 1})
    assert r.status_code == 404 and "nope" in r.text
    assert api.get("/v1/deployments/nope/schedules").status_code == 404

