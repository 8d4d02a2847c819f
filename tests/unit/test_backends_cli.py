"""`gpufleet backends ls|install`, `gpufleet workers` and `deploy`'s version and KV cache
flags, as a user runs them (the real CLI in a subprocess) against a real gpufleet server
(the app on a real SQLite database, served by uvicorn in this process). Flow runs are
recorded instead of started: tests/e2e/test_backends.py follows real install runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gpufleet.cli.output import engines_summary
from gpufleet.core.schemas import EngineInstall
from gpufleet.server.app import create_app
from tests.support import synthetic_models as sm
from tests.support.servers import free_port

GiB = 1 << 30


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def control(self, flow: str, params: dict[str, Any]) -> str:
        self.calls.append((flow, params))
        return ""

    def node(self, flow: str, worker: Any, params: dict[str, Any]) -> str:
        self.calls.append((flow, worker.name, params))
        return ""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    app = create_app(f"sqlite:///{tmp_path / 'db.sqlite'}", trigger=recorder.control, node_trigger=recorder.node,
                     run_controller=False, auth=False)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    for name, gpus, engines in (
        ("cpu", [], [EngineInstall(engine="llama.cpp", version="b11434", devices=["cpu", "cuda"], default=True),
                     EngineInstall(engine="vllm", version="0.32.0", devices=["cpu"], location="/e/vllm")]),
        ("gpu", [{"index": 0, "name": "H200", "memory_total": 140 * GiB}], []),
    ):
        httpx.post(f"{url}/v1/workers", json={
            "name": name, "address": "http://127.0.0.1:1", "cpu_count": 2, "memory_total": 8 * GiB,
            "work_queue": f"node-{name}", "gpus": gpus,
            "engines": [e.model_dump(mode="json") for e in engines]}).raise_for_status()
    yield url, recorder
    srv.should_exit = True
    thread.join(10)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUFLEET_SERVER_URL": url, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "gpufleet.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def safetensors_model(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    head, size = sm.safetensors_header(sm.llama_hf_tensors(layers=2, hidden=64, heads=4, kv_heads=2, ff=128,
                                                            vocab=100))
    with (model / "model.safetensors").open("wb") as f:
        f.write(head)
        f.truncate(size)
    (model / "config.json").write_bytes(sm.llama_config(2, 64, 4, 2, 128, 100))
    return model


def deployments(url: str) -> list[dict]:
    return httpx.get(f"{url}/v1/deployments").json()


def test_engines_summary_groups_versions_per_engine() -> None:
    engines = [EngineInstall(engine="llama.cpp", version="b11434", devices=["cpu", "cuda"]),
               EngineInstall(engine="vllm", version="0.32.0", devices=["cpu"]),
               EngineInstall(engine="vllm", version="0.31.0", devices=["cuda"])]
    assert engines_summary(engines) == "llama.cpp b11434 (cpu, cuda); vllm 0.32.0 (cpu), 0.31.0 (cuda)"
    assert engines_summary([]) == "-"


def test_workers_and_backends_ls_show_what_nodes_report(server: tuple[str, Recorder]) -> None:
    url, _ = server
    out = cli(url, "workers")
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.split()[0] == "cpu")
    assert "llama.cpp b11434 (cpu, cuda); vllm 0.32.0 (cpu)" in line and "process" in line

    out = cli(url, "backends", "ls", "--node", "cpu")
    assert out.returncode == 0, out.stderr
    rows = [x.split() for x in out.stdout.splitlines()[1:]]
    assert ["cpu", "llama.cpp", "b11434", "cpu,", "cuda", "-", "*"] in rows
    assert ["cpu", "vllm", "0.32.0", "cpu", "/e/vllm"] in rows
    assert "gpu" not in out.stdout

    listed = json.loads(cli(url, "backends", "ls", "--json").stdout)
    assert [(e["node"], e["engine"], e["version"], e["default"]) for e in listed] == [
        ("cpu", "llama.cpp", "b11434", True), ("cpu", "vllm", "0.32.0", False)]

    out = cli(url, "backends", "ls", "--node", "ghost")
    assert out.returncode == 1 and "worker 'ghost' is not registered; registered: cpu, gpu" in out.stderr


def test_install_without_waiting_starts_the_run_on_the_node(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    out = cli(url, "backends", "install", "vllm", "0.32.0", "--node", "gpu", "--no-wait")
    assert out.returncode == 0, out.stderr
    assert "installing vllm 0.32.0 (cuda) on gpu" in out.stdout
    assert recorder.calls == [("install-backend", "gpu", {"engine": "vllm", "version": "0.32.0", "device": "cuda"})]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["vlm", "0.32.0", "--node", "cpu"], 2, "unknown backend 'vlm'; choose one of llama.cpp, llama-box, vllm, vox-box"),
    (["vllm", "0.32.0", "--node", "cpu", "--device", "tpu"], 2, "--device must be one of cpu, cuda, rocm, got 'tpu'"),
    (["vllm", "0.32.0"], 2, "2 workers are registered; choose one with --node (cpu, gpu)"),
    (["vllm", "0.32.0", "--node", "cpu", "--device", "cuda"], 1, "worker cpu has no NVIDIA GPU it can drive"),
    (["vllm", "newest", "--node", "cpu"], 1, "'newest' is not a vllm release version"),
    (["llama.cpp", "b1", "--node", "cpu"], 1, "builds llama.cpp b11434 only"),
    (["vllm", "0.32.0", "--node", "ghost"], 1, "worker 'ghost' is not registered"),
])
def test_install_refuses_bad_input(server: tuple[str, Recorder], args: list[str], code: int, message: str) -> None:
    url, recorder = server
    out = cli(url, "backends", "install", *args)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert message in " ".join(out.stderr.split()) and "Traceback" not in out.stderr
    assert recorder.calls == []


def test_deploy_backend_version_and_kv_cache_flags(server: tuple[str, Recorder], safetensors_model: Path) -> None:
    url, recorder = server
    out = cli(url, "deploy", "--name", "chat", "--local-path", str(safetensors_model), "--backend", "vllm",
              "--backend-version", "0.32.0", "--kv-cache-cpu-gib", "4", "--kv-cache-chunk-size", "512",
              "--kv-cache-remote-url", "redis://cache:6379", "--no-wait")
    assert out.returncode == 0, out.stderr
    (dep,) = deployments(url)
    assert dep["backend_version"] == "0.32.0"
    assert dep["kv_cache"] == {"cpu_gib": 4.0, "chunk_size": 512, "remote_url": "redis://cache:6379"}
    assert [c[0] for c in recorder.calls] == ["deploy"]


@pytest.mark.parametrize(("extra", "code", "message"), [
    (["--backend", "vllm", "--backend-version", "0.40.0"], 1,
     "vllm 0.40.0 is not installed on any ready worker (installed per worker: cpu: 0.32.0 (cpu); gpu: none); "
     "install it with `gpufleet backends install vllm 0.40.0 --node N`"),
    (["--backend", "vox-box"], 1, "no worker can run vox-box: install it with `gpufleet backends install vox-box"),
    (["--backend", "vllm", "--kv-cache-chunk-size", "64"], 2,
     "--kv-cache-chunk-size and --kv-cache-remote-url extend the KV cache that --kv-cache-cpu-gib N turns on"),
    (["--backend", "vllm", "--kv-cache-cpu-gib", "0"], 2, "kv_cache.cpu_gib: Input should be greater than 0"),
    (["--backend", "vllm", "--kv-cache-cpu-gib", "4", "--kv-cache-remote-url", "http://cache"], 2,
     "is not a store URL"),
    (["--backend", "llama.cpp", "--kv-cache-cpu-gib", "4"], 2, "the extended KV cache (--kv-cache-cpu-gib) is for vllm"),
])
def test_deploy_refuses_bad_input_and_writes_nothing(server: tuple[str, Recorder], safetensors_model: Path,
                                                     tiny_gguf: Path, extra: list[str], code: int,
                                                     message: str) -> None:
    url, recorder = server
    model = tiny_gguf if "llama.cpp" in extra else safetensors_model
    out = cli(url, "deploy", "--name", "bad", "--local-path", str(model), "--no-wait", *extra)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert message in " ".join(out.stderr.split()) and "Traceback" not in out.stderr
    assert deployments(url) == [] and recorder.calls == []
