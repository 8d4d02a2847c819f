"""PATCH /v1/deployments/NAME records the edit and starts the `edit` flow run (every edit is
one); with rollout it records the rollout for the plan; a policy edit outdates no instance.
On SQLite and PostgreSQL, with the server's trigger recorded instead of Prefect."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.integration.test_backend_versions import Recorder, api, recorder, safetensors_model, spec  # noqa: F401


def test_edit_starts_the_edit_flow_and_records_the_rollout(api: TestClient, recorder: Recorder,  # noqa: F811
                                                           safetensors_model: Path) -> None:  # noqa: F811
    assert api.post("/v1/deployments", json=spec(safetensors_model, "vllm", "0.32.0")).status_code == 202
    r = api.patch("/v1/deployments/m", json={"restart_on_error": False})
    assert r.status_code == 200 and r.json()["generation"] == 1  # a policy: no new generation
    assert recorder.calls[-1] == ("edit", {"name": "m", "rollout": False})
    assert r.json()["flow_run_id"] and not r.json()["rolling_out"]

    r = api.patch("/v1/deployments/m", json={"env": {"A": "1"}, "rollout": True, "max_unavailable": 2})
    body = r.json()
    assert r.status_code == 200 and body["generation"] == 2 and body["rolling_out"]
    assert body["rollout_status"] == "rollout of generation 2 asked for (2 at a time)"
    assert recorder.calls[-1] == ("edit", {"name": "m", "rollout": True})
    assert api.get("/v1/deployments/m").json()["env"] == {"A": "1"}

    r = api.patch("/v1/deployments/m", json={"rollout": True, "max_unavailable": 0})
    assert r.status_code == 422  # at least one at a time


def test_a_failed_flow_start_says_the_edit_was_recorded(api: TestClient,  # noqa: F811
                                                        safetensors_model: Path) -> None:  # noqa: F811
    """Prefect refused the run: 503 naming it; the edit stays recorded (the controller re-drives a rollout)."""
    assert api.post("/v1/deployments", json=spec(safetensors_model, "vllm", "0.32.0")).status_code == 202

    def refused(flow: str, params: dict) -> str:
        raise RuntimeError("Prefect is down")

    api.app.state.gpufleet.trigger = refused  # type: ignore[attr-defined]
    r = api.patch("/v1/deployments/m", json={"env": {"A": "1"}, "rollout": True})
    assert r.status_code == 503 and "recorded, but could not start the edit flow" in r.json()["detail"]
    dep = api.get("/v1/deployments/m").json()
    assert dep["env"] == {"A": "1"} and dep["rolling_out"]
