"""Backend versions on the real app and database (SQLite and PostgreSQL): the deploy-time
engine/version check against what workers reported, the install route's checks, and the
engine report a node sends after an install. Flow runs are recorded, not started here
(tests/e2e/test_backends.py runs `backends install` through Prefect on real nodes)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gpufleet.core.schemas import EngineInstall
from gpufleet.server.app import create_app
from gpufleet.store.models import WorkerRow, utcnow
from tests.support import synthetic_models as sm

GiB = 1 << 30


def engine(name: str, version: str, *devices: str, default: bool = False) -> dict[str, Any]:
    return EngineInstall(engine=name, version=version, devices=list(devices), location=f"/engines/{name}-{version}",
                         default=default).model_dump(mode="json")


WORKERS = {
    # a real NVIDIA GPU: installs default to CUDA there
    "gpu": ([{"index": 0, "name": "A100-80G", "memory_total": 80 * GiB, "virtual": False}],
            [engine("llama.cpp", "b11434", "cpu", "cuda", default=True), engine("vllm", "0.32.0", "cuda")]),
    # declared GPUs only: served by the CPU
    "cpu": ([{"index": 0, "name": "T4", "memory_total": 16 * GiB, "virtual": True}],
            [engine("llama.cpp", "xllamacpp-0.2.5", "cpu", default=True), engine("vllm", "0.31.0", "cpu")]),
    "down": ([], [engine("vllm", "0.30.0", "cpu")]),
}


class Recorder:
    """The server's triggers: what it would have started in Prefect."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def control(self, flow: str, params: dict[str, Any]) -> str:
        self.calls.append((flow, params))
        return "00000000-0000-0000-0000-000000000001"

    def node(self, flow: str, worker: Any, params: dict[str, Any]) -> str:
        self.calls.append((flow, worker.name, params))
        return "00000000-0000-0000-0000-000000000002"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def register(client: TestClient, name: str, gpus: list, engines: list) -> None:
    r = client.post("/v1/workers", json={"name": name, "address": "http://127.0.0.1:1", "cpu_count": 4,
                                         "memory_total": 32 * GiB, "work_queue": f"node-{name}", "gpus": gpus,
                                         "engines": engines})
    assert r.status_code == 200, r.text


@pytest.fixture
def api(database_url: str, recorder: Recorder):  # noqa: ANN201
    app = create_app(database_url, trigger=recorder.control, node_trigger=recorder.node, run_controller=False, auth=False)
    with TestClient(app) as client:
        for name, (gpus, engines) in WORKERS.items():
            register(client, name, gpus, engines)
        with app.state.gpufleet.session() as s:  # "down" stopped beating an hour ago
            s.get(WorkerRow, "down").last_heartbeat = utcnow() - timedelta(hours=1)
        yield client


@pytest.fixture
def safetensors_model(tmp_path: Path) -> Path:
    """A Llama checkpoint's headers and config (sparse: no weights on disk), which vLLM serves."""
    tensors = sm.llama_hf_tensors(layers=2, hidden=64, heads=4, kv_heads=2, ff=128, vocab=100, dtype="BF16")
    head, size = sm.safetensors_header(tensors)
    with (tmp_path / "model.safetensors").open("wb") as f:
        f.write(head)
        f.truncate(size)
    (tmp_path / "config.json").write_bytes(sm.llama_config(2, 64, 4, 2, 128, 100))
    return tmp_path


def spec(path: Path, backend: str, version: str | None, name: str = "m") -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "replicas": 1, "backend": backend, "source": {"local_path": str(path)}}
    if version is not None:
        body["backend_version"] = version
    return body


INSTALL = "install it with `gpufleet backends install"

ACCEPTED = [
    ("vllm", "0.32.0"),            # on the ready GPU worker (CUDA)
    ("vllm", "0.31.0"),            # on the CPU worker: any device kind counts
    ("llama.cpp", "xllamacpp-0.2.5"),  # a version a node reports, though gpufleet does not install it
    ("vllm", None),                # no version: none recorded, nodes run the pinned default
]
REFUSED = [
    ("installed only on a worker that is not ready", "vllm", "0.30.0",
     ["vllm 0.30.0 is not installed on any ready worker", "down (not ready): 0.30.0 (cpu)",
      f"{INSTALL} vllm 0.30.0 --node N`"]),
    ("not installed anywhere", "vllm", "0.33.1",
     ["vllm 0.33.1 is not installed on any ready worker",
      "cpu: 0.31.0 (cpu); down (not ready): 0.30.0 (cpu); gpu: 0.32.0 (cuda)", f"{INSTALL} vllm 0.33.1 --node N`"]),
    ("not a version at all", "vllm", "latest",
     ["unknown vllm version latest: 'latest' is not a vllm release version (e.g. 0.32.0)",
      "gpu: 0.32.0 (cuda)"]),
    ("a llama.cpp build the script cannot make", "llama.cpp", "b99999",
     ["unknown llama.cpp version b99999: scripts/build-llama-cpp.sh builds llama.cpp b11434 only",
      "cpu: xllamacpp-0.2.5 (cpu)", "gpu: b11434 (cpu, cuda)"]),
    ("an engine no worker reports", "vox-box", None,
     ["no worker can run vox-box: install it with `gpufleet backends install vox-box 0.0.21 --node N`",
      "workers report: llama.cpp, vllm"]),
    ("an engine no worker reports, with a version", "vox-box", "0.0.21", ["no worker can run vox-box"]),
    ("an engine gpufleet does not install", "llama-box", None,
     ["no worker can run llama-box: llama-box is not installed by gpufleet; deploy GGUF models with "
      "--backend llama.cpp"]),
]


def model_for(backend: str, safetensors_model: Path, tiny_gguf: Path) -> Path:
    return tiny_gguf if backend.startswith("llama") else safetensors_model


@pytest.mark.parametrize(("backend", "version"), ACCEPTED, ids=[f"{b}-{v}" for b, v in ACCEPTED])
def test_deploy_accepts_an_installed_version(api: TestClient, recorder: Recorder, safetensors_model: Path,
                                             tiny_gguf: Path, backend: str, version: str | None) -> None:
    r = api.post("/v1/deployments", json=spec(model_for(backend, safetensors_model, tiny_gguf), backend, version))
    assert r.status_code == 202, r.text
    dep = api.get("/v1/deployments/m").json()
    assert (dep["backend"], dep["backend_version"]) == (backend, version)  # None stays None: the pinned default
    assert [c[0] for c in recorder.calls] == ["deploy"]


@pytest.mark.parametrize(("backend", "version", "messages"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_deploy_refuses_what_no_ready_worker_has(api: TestClient, recorder: Recorder, safetensors_model: Path,
                                                 tiny_gguf: Path, backend: str, version: str | None,
                                                 messages: list[str]) -> None:
    r = api.post("/v1/deployments", json=spec(model_for(backend, safetensors_model, tiny_gguf), backend, version))
    assert r.status_code == 400, r.text
    for message in messages:
        assert message in r.json()["detail"]
    assert api.get("/v1/deployments").json() == [] and recorder.calls == []  # nothing written, nothing started
    # the flow's own record route applies the same check (a deploy run started from the Prefect UI)
    body = spec(model_for(backend, safetensors_model, tiny_gguf), backend, version)
    r = api.put("/v1/deployments/m/record", json=body)
    assert r.status_code == 400 and messages[0] in r.json()["detail"]
    assert api.get("/v1/deployments").json() == []


def test_a_local_path_the_server_cannot_see_is_checked_by_its_named_backend(api: TestClient) -> None:
    r = api.post("/v1/deployments", json=spec(Path("/only/on/workers/model"), "vllm", "0.29.0"))
    assert r.status_code == 400 and "vllm 0.29.0 is not installed on any ready worker" in r.json()["detail"]
    r = api.post("/v1/deployments", json=spec(Path("/only/on/workers/model"), "vllm", "0.31.0"))
    assert r.status_code == 202, r.text


def test_edit_checks_the_new_version(api: TestClient, safetensors_model: Path) -> None:
    assert api.post("/v1/deployments", json=spec(safetensors_model, "vllm", "0.32.0")).status_code == 202
    r = api.patch("/v1/deployments/m", json={"backend_version": "0.99.0"})
    assert r.status_code == 400 and f"{INSTALL} vllm 0.99.0 --node N`" in r.json()["detail"]
    dep = api.get("/v1/deployments/m").json()
    assert (dep["backend_version"], dep["generation"]) == ("0.32.0", 1)  # unchanged
    r = api.patch("/v1/deployments/m", json={"backend_version": "0.31.0"})
    assert r.status_code == 200 and r.json()["backend_version"] == "0.31.0"


def test_an_empty_cluster_is_not_checked(database_url: str, recorder: Recorder, safetensors_model: Path) -> None:
    """No worker has registered yet: the deployment waits PENDING for nodes, as before."""
    app = create_app(database_url, trigger=recorder.control, node_trigger=recorder.node, run_controller=False, auth=False)
    with TestClient(app) as client:
        r = client.post("/v1/deployments", json=spec(safetensors_model, "vllm", None))
        assert r.status_code == 202, r.text


# ------------------------------------------------------------------ install route


@pytest.mark.parametrize(("worker", "body", "device"), [
    ("cpu", {"engine": "vllm", "version": "0.32.0"}, "cpu"),          # declared GPUs only: CPU build
    ("gpu", {"engine": "vllm", "version": "0.32.0"}, "cuda"),         # a real NVIDIA GPU: CUDA build
    ("gpu", {"engine": "vllm", "version": "0.32.0", "device": "cpu"}, "cpu"),
    ("cpu", {"engine": "llama.cpp", "version": "b11434"}, "cpu"),
    ("cpu", {"engine": "vox-box", "version": "0.0.21"}, "cpu"),
])
def test_install_starts_a_run_on_the_workers_queue(api: TestClient, recorder: Recorder, worker: str,
                                                   body: dict, device: str) -> None:
    r = api.post(f"/v1/workers/{worker}/backends", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["operation"] == "install-backend" and r.json()["flow_run_id"]
    assert f"({device}) on {worker}" in r.json()["detail"]
    assert recorder.calls == [("install-backend", worker, {**body, "device": device})]


@pytest.mark.parametrize(("worker", "body", "status", "message"), [
    ("nope", {"engine": "vllm", "version": "0.32.0"}, 404, "worker 'nope' is not registered"),
    ("cpu", {"engine": "vlm", "version": "0.32.0"}, 400, "unknown backend 'vlm'"),
    ("cpu", {"engine": "vllm", "version": "latest"}, 400, "'latest' is not a vllm release version"),
    ("cpu", {"engine": "llama.cpp", "version": "b1"}, 400, "builds llama.cpp b11434 only"),
    ("cpu", {"engine": "llama-box", "version": "b11434"}, 400, "llama-box is not installed by gpufleet"),
    ("cpu", {"engine": "vllm", "version": "0.32.0", "device": "cuda"}, 400,
     "worker cpu has no NVIDIA GPU it can drive"),
    ("gpu", {"engine": "vox-box", "version": "0.0.21", "device": "rocm"}, 400,
     "vox-box has no rocm build; choose --device cuda or cpu"),
    ("gpu", {"engine": "llama.cpp", "version": "b11434", "device": "rocm"}, 400, "not ROCm"),
    ("down", {"engine": "vllm", "version": "0.32.0"}, 409, "worker down is not ready"),
    ("cpu", {"engine": "vllm", "version": "0.32.0", "device": "tpu"}, 422, "device"),
    ("cpu", {"engine": "vllm", "version": "0.32.0", "colour": "red"}, 422, "colour"),
])
def test_install_refuses_bad_input(api: TestClient, recorder: Recorder, worker: str, body: dict, status: int,
                                   message: str) -> None:
    r = api.post(f"/v1/workers/{worker}/backends", json=body)
    assert r.status_code == status and message in r.text, r.text
    assert recorder.calls == []


def test_engine_report_replaces_what_the_worker_lists(api: TestClient, safetensors_model: Path) -> None:
    """After an install run, the node's report makes the version deployable at once."""
    assert api.post("/v1/deployments", json=spec(safetensors_model, "vllm", "0.33.1")).status_code == 400
    new = WORKERS["cpu"][1] + [engine("vllm", "0.33.1", "cpu")]
    r = api.put("/v1/internal/workers/cpu/engines", json=new)
    assert r.status_code == 200 and r.json()["engines"] == new
    listed = {w["name"]: w for w in api.get("/v1/workers").json()}
    assert listed["cpu"]["engines"] == new and listed["cpu"]["runtime"] == "process"
    assert listed["gpu"]["engines"] == WORKERS["gpu"][1]  # others untouched
    assert api.post("/v1/deployments", json=spec(safetensors_model, "vllm", "0.33.1")).status_code == 202
    r = api.put("/v1/internal/workers/ghost/engines", json=new)
    assert r.status_code == 404 and "worker 'ghost' is not registered" in r.text
    r = api.put("/v1/internal/workers/cpu/engines", json=[{"engine": "vllm"}])
    assert r.status_code == 422
