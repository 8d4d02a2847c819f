"""The placement endpoints on the real app and database: snapshot, plan (a dry run),
place (from the stored metadata, not the caller's estimate), and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gpufleet.server.app import create_app

GiB = 1 << 30


@pytest.fixture
def api(database_url: str):  # noqa: ANN201
    app = create_app(database_url, trigger=lambda op, params: "", run_controller=False, auth=False)
    with TestClient(app) as client:
        for name, gpus in (("cpu", []), ("gpu", [{"index": 0, "name": "A100-80G", "memory_total": 80 * GiB,
                                                   "virtual": True}])):
            r = client.post("/v1/workers", json={"name": name, "address": "http://127.0.0.1:1", "cpu_count": 4,
                                                 "memory_total": 32 * GiB, "work_queue": f"node-{name}",
                                                 "gpus": gpus, "labels": {"kind": name}})
            assert r.status_code == 200, r.text
        yield client


def spec(tiny: Path, **placement: object) -> dict:
    return {"name": "t", "replicas": 3, "source": {"local_path": str(tiny)}, "placement": placement}


def test_snapshot_and_plan(api: TestClient, tiny_gguf: Path) -> None:
    snap = api.get("/v1/cluster/snapshot").json()
    assert [w["name"] for w in snap["workers"]] == ["cpu", "gpu"] and snap["claims"] == []
    result = api.post("/v1/plan", json={"spec": spec(tiny_gguf)}).json()
    # GPU first (the tiny model fits one 80 GiB GPU three times); the GPU worker every time
    assert [r["placement"]["worker"] for r in result["replicas"]] == ["gpu", "gpu", "gpu"]
    assert api.get("/v1/cluster/snapshot").json()["claims"] == []  # a dry run writes nothing
    # against a given snapshot: without the GPU worker, all three go to the CPU worker
    snap["workers"] = [w for w in snap["workers"] if w["name"] == "cpu"]
    result = api.post("/v1/plan", json={"spec": spec(tiny_gguf), "cluster": snap}).json()
    assert [(r["placement"]["worker"], r["placement"]["stage"]) for r in result["replicas"]] == [("cpu", "cpu")] * 3


def test_plan_with_selector_that_matches_nothing_gives_reasons(api: TestClient, tiny_gguf: Path) -> None:
    result = api.post("/v1/plan", json={"spec": spec(tiny_gguf, worker_selector=["kind=tpu"])}).json()
    first = result["replicas"][0]
    assert first["placement"] is None
    assert first["reasons"] == {"cpu": "label selector 'kind=tpu' does not match (kind=cpu)",
                                "gpu": "label selector 'kind=tpu' does not match (kind=gpu)"}


@pytest.mark.parametrize(("placement", "message"), [
    ({"worker_selector": ["kind in ()"]}, "must be non-empty values"),
    ({"gpu_selector": ["gpu"]}, "use WORKER:INDEX"),
])
def test_bad_selectors_are_400(api: TestClient, tiny_gguf: Path, placement: dict, message: str) -> None:
    r = api.post("/v1/plan", json={"spec": spec(tiny_gguf, **placement)})
    assert r.status_code == 400 and message in r.json()["detail"]
    assert "spec.placement" in r.json()["detail"]


def test_place_ignores_the_callers_estimate(api: TestClient, tiny_gguf: Path) -> None:
    """A caller claiming 79 GiB would keep the next replica off the GPU; the server computes its own."""
    state = api.app.state.gpufleet  # type: ignore[attr-defined]
    from gpufleet.core.schemas import DeploymentSpec
    from gpufleet.server.validation import validate_spec
    from gpufleet.store import plan_apply, repository as repo

    s = DeploymentSpec.model_validate(spec(tiny_gguf))
    s, meta, est = validate_spec(s)
    with state.session() as session:
        repo.create_deployment(session, s, meta, est)
        ids = plan_apply.create_missing(session, "t")
    huge = {"gpu_vram": 79 * GiB, "gpu_ram": 0, "cpu_ram": 0}
    placed = [api.post(f"/v1/internal/instances/{iid}/place", json=huge).json() for iid in ids[:2]]
    assert [p["worker"] for p in placed] == ["gpu", "gpu"]
    assert all(p["placement"]["vram_claim"]["0"] < GiB for p in placed)
    again = api.post(f"/v1/internal/instances/{ids[2]}/place").json()  # no body at all
    assert again["state"] == "SCHEDULED" and again["worker"] == "gpu"


def test_place_many_in_one_transaction(api: TestClient, tiny_gguf: Path) -> None:
    state = api.app.state.gpufleet  # type: ignore[attr-defined]
    from gpufleet.core.schemas import DeploymentSpec
    from gpufleet.server.validation import validate_spec
    from gpufleet.store import plan_apply, repository as repo

    s = DeploymentSpec.model_validate({**spec(tiny_gguf), "replicas": 4})
    s, meta, est = validate_spec(s)
    with state.session() as session:
        repo.create_deployment(session, s, meta, est)
        ids = plan_apply.create_missing(session, "t")
    placed = api.post("/v1/internal/place", json={"instance_ids": ids}).json()
    assert [p["id"] for p in placed] == ids
    assert all(p["state"] == "SCHEDULED" and p["worker"] == "gpu" for p in placed)
    claims = api.get("/v1/cluster/snapshot").json()["claims"]
    assert sorted(c["instance"] for c in claims) == sorted(ids)
    again = api.post("/v1/internal/place", json={"instance_ids": ids}).json()  # idempotent
    assert [p["placement"] for p in again] == [p["placement"] for p in placed]
    assert api.post("/v1/internal/place", json={"instance_ids": [99999]}).status_code == 404


def test_metrics_count_requests_by_route_template(api: TestClient) -> None:
    api.get("/v1/instances/41")  # 404, counted under its template, not its id
    api.get("/v1/instances/42")
    api.get("/v1/workers")
    text = api.get("/metrics").text
    assert 'gpufleet_http_requests_total{method="GET",route="/v1/instances/{instance_id}",status="404"} 2.0' in text
    assert 'gpufleet_http_requests_total{method="GET",route="/v1/workers",status="200"} 1.0' in text


def test_heartbeats_carry_what_other_programs_hold_on_each_gpu(api: TestClient, tiny_gguf: Path) -> None:
    """80 GiB GPU, 79.9 GiB held by a program gpufleet did not start: the tiny model (≈0.7 GiB
    per GPU) no longer fits it, so the plan puts all three replicas on the CPU worker; the
    next heartbeat saying it is gone gives the GPU back."""
    busy = api.post("/v1/workers/gpu/heartbeat", json={"gpus_used_outside": {"0": int(79.9 * GiB)}})
    assert busy.status_code == 200
    [gpu_worker] = [w for w in api.get("/v1/workers").json() if w["name"] == "gpu"]
    assert gpu_worker["gpus"][0]["memory_used_outside"] == int(79.9 * GiB)
    result = api.post("/v1/plan", json={"spec": spec(tiny_gguf)}).json()
    assert [r["placement"]["worker"] for r in result["replicas"]] == ["cpu"] * 3
    assert api.post("/v1/workers/gpu/heartbeat", json={"gpus_used_outside": {"0": 0}}).status_code == 200
    result = api.post("/v1/plan", json={"spec": spec(tiny_gguf)}).json()
    assert [r["placement"]["worker"] for r in result["replicas"]] == ["gpu"] * 3
    assert api.post("/v1/workers/gpu/heartbeat").status_code == 200  # an older node sends no body
    assert api.post("/v1/workers/gpu/heartbeat", json={"gpus_used_outside": {"0": -1}}).status_code == 422


def test_operator_labels_survive_registration_and_steer_placement(api: TestClient, tiny_gguf: Path) -> None:
    r = api.patch("/v1/workers/cpu", json={"labels": {"zone": "a", "kind": "big-cpu"}})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"kind": "big-cpu", "zone": "a"}  # the operator's win over the node's kind=cpu
    assert r.json()["operator_labels"] == {"kind": "big-cpu", "zone": "a"}
    # the node registers again (a restart) with its own labels: the operator's stay on top
    again = api.post("/v1/workers", json={"name": "cpu", "address": "http://127.0.0.1:1", "cpu_count": 4,
                                          "memory_total": 32 * GiB, "work_queue": "node-cpu", "labels": {"kind": "cpu"}})
    assert again.json()["labels"] == {"kind": "big-cpu", "zone": "a"}
    result = api.post("/v1/plan", json={"spec": spec(tiny_gguf, worker_selector=["zone=a"])}).json()
    assert [r["placement"]["worker"] for r in result["replicas"]] == ["cpu"] * 3
    cleared = api.patch("/v1/workers/cpu", json={"labels": {}}).json()
    assert cleared["labels"] == {"kind": "cpu"} and cleared["operator_labels"] == {}


@pytest.mark.parametrize(("name", "labels", "status", "message"), [
    ("cpu", {"bad key": "x"}, 422, "invalid label key 'bad key'"),
    ("cpu", {"zone": "a b"}, 422, "invalid value 'a b' of label 'zone'"),
    ("nope", {"zone": "a"}, 404, "worker 'nope' is not registered"),
])
def test_bad_labels_are_refused_and_change_nothing(api: TestClient, name: str, labels: dict, status: int,
                                                   message: str) -> None:
    r = api.patch(f"/v1/workers/{name}", json={"labels": labels})
    assert r.status_code == status and message in r.text, r.text
    [cpu] = [w for w in api.get("/v1/workers").json() if w["name"] == "cpu"]
    assert cpu["labels"] == {"kind": "cpu"} and cpu["operator_labels"] == {}
