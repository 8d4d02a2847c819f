"""Real parts for the gateway tests: llama.cpp servers (xllamacpp, each its own process), and a
gpufleet server app on a real port (uvicorn in a thread) whose database says which of them are
the RUNNING replicas of which deployment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gpufleet.core.schemas import DeploymentSpec, GpuInfo, InstanceStateUpdate, ModelSource, WorkerRegistration
from gpufleet.core.states import InstanceState
from gpufleet.demo.tiny_model import TinyModelShape, write_tiny_llama_gguf
from gpufleet.server.app import create_app
from gpufleet.sources import read_local_metadata
from gpufleet.core.estimation.summary import summarize
from gpufleet.store import keys as key_store, plan_apply, repository as repo
from gpufleet.store.models import InstanceRow
from tests.support.servers import free_port, wait_healthy

GiB = 1 << 30
#: a model that can generate a few thousand tokens in one request: a long stream lasts seconds
LONG_CONTEXT = TinyModelShape(context_length=8192)

LLAMA_SCRIPT = """
import sys, time
import xllamacpp as xlc

params = xlc.CommonParams()
params.model.path = sys.argv[1]
params.hostnames = ["127.0.0.1"]
params.port = int(sys.argv[2])
params.n_ctx = int(sys.argv[3])
params.n_parallel = int(sys.argv[4])
params.n_gpu_layers = 0
params.cpuparams.n_threads = 1
params.cpuparams_batch.n_threads = 1
params.model_alias = {"tiny"}
server = xlc.Server(params)
print("listening", server.listening_address, flush=True)
while True:
    time.sleep(3600)
"""


def write_long_model(directory: Path) -> Path:
    return write_tiny_llama_gguf(directory / "tiny-long.gguf", LONG_CONTEXT)


@dataclass
class LlamaServer:
    """A real llama.cpp server (llama.cpp's server code through xllamacpp) in a child process."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, model: Path, log_dir: Path, ctx: int = 8192, parallel: int = 2) -> "LlamaServer":
        port = free_port()
        log = log_dir / f"llama-{port}.log"
        with log.open("wb") as f:
            proc = subprocess.Popen([sys.executable, "-c", LLAMA_SCRIPT, str(model), str(port), str(ctx),
                                     str(parallel)], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = cls(proc, port, log)
        wait_healthy(proc, server.url, log, "llama.cpp server", timeout=60)
        return server

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@dataclass
class GatewayServer:
    """The gpufleet server app (REST API, gateway, /metrics) on a real port, with a database
    we set the replicas in directly."""

    app: FastAPI
    url: str
    model: Path
    server: uvicorn.Server
    thread: threading.Thread
    #: an admin key of this server (authentication is on, as in production)
    admin_key: str = ""
    worker: str = "w1"
    deployments: dict[str, list[int]] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def key(self, name: str, role: str, models: tuple[str, ...] = ()) -> str:
        """A new key of this server with that role and scope."""
        with self.sessions.begin() as s:
            return key_store.create_key(s, name, role, models, None).token

    @property
    def sessions(self) -> Any:
        return self.app.state.gpufleet.sessions

    def deploy(self, name: str, replicas: int) -> list[int]:
        """A deployment whose ``replicas`` instances are placed (PENDING → SCHEDULED), not started."""
        spec = DeploymentSpec(name=name, replicas=replicas,
                              source=ModelSource(kind="local_path", local_path=str(self.model)))
        _, meta = read_local_metadata(str(self.model))
        with self.sessions.begin() as s:
            repo.create_deployment(s, spec, meta, summarize(meta, "llama.cpp"))
        with self.sessions.begin() as s:
            applied = plan_apply.apply_plan(s, name, self.app.state.gpufleet.worker_timeout)
        self.deployments[name] = sorted(applied.created)
        return self.deployments[name]

    def run(self, instance: int, backend: LlamaServer) -> None:
        """The instance is RUNNING at that backend's port (what a node reports)."""
        with self.sessions.begin() as s:
            for state in (InstanceState.STARTING, InstanceState.RUNNING):
                repo.update_instance_state(s, instance, InstanceStateUpdate(state=state, port=backend.port))

    def mark_deleting(self, instance: int) -> None:
        """What the plan's MARK_FOR_REMOVAL does to the instance a scale-down picked."""
        with self.sessions.begin() as s:
            repo.mark_instance_deleting(s, instance)

    def instance_name(self, instance: int) -> str:
        with self.sessions() as s:
            return s.get(InstanceRow, instance).name

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """/metrics parsed by prometheus_client's parser: {(sample name, sorted labels): value}."""
        text = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_gateway_server(tmp: Path, model: Path, port: int = 0) -> GatewayServer:
    """Trigger: flows are not started (nothing here needs one); no controller."""
    app = create_app(f"sqlite:///{tmp / 'gpufleet.db'}", trigger=lambda *_: "", run_controller=False)
    with app.state.gpufleet.sessions.begin() as s:
        admin_key = key_store.create_key(s, "test-admin", "admin", (), None).token
        repo.register_worker(s, WorkerRegistration(
            name="w1", address="http://127.0.0.1:1", cpu_count=16, memory_total=64 * GiB, work_queue="node-w1",
            gpus=[GpuInfo(index=0, name="T4", memory_total=16 * GiB, virtual=True)]))
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gpufleet server app did not start")
        time.sleep(0.05)
    return GatewayServer(app, f"http://127.0.0.1:{port}", model, server, thread, admin_key)


def chat_body(model: str, max_tokens: int = 8, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": max_tokens,
            "stream": stream, **extra}


def stream_chunks(url: str, body: dict[str, Any], timeout: float = 120,
                  headers: dict[str, str] | None = None) -> Iterator[tuple[float, bytes]]:
    """(arrival time, raw bytes) of each piece of a streamed answer as the client receives it."""
    with httpx.stream("POST", url, json=body, timeout=timeout, headers=headers) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_raw():
            yield time.monotonic(), chunk


@dataclass
class RunningFront:
    """A `gpufleet gateway` process's app served by its own HTTP server (gpufleet.gateway.front),
    in a thread of its own as `gpufleet gateway` runs it."""

    url: str
    app: Any
    loop: Any
    stop_event: Any
    thread: threading.Thread

    def metrics(self, headers: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)


def start_front(gw: GatewayServer, wait_s: float = 1.0, refresh_s: float = 0.2) -> RunningFront:
    """A front reading its table and keys from ``gw``; it answers /health when this returns."""
    import asyncio

    from gpufleet.gateway.front import GatewayFront, serve
    from gpufleet.gateway.settings import GatewaySettings
    from gpufleet.gateway.standalone import create_gateway_app

    app = create_gateway_app(gw.url, GatewaySettings(refresh_s=refresh_s, wait_s=wait_s), headers=gw.headers)
    port = free_port()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            started["stop"], started["loop"] = asyncio.Event(), asyncio.get_running_loop()
            ready.set()
            await serve(GatewayFront.of(app), "127.0.0.1", port, started["stop"])
        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the front never answered /health")
        time.sleep(0.05)
    return RunningFront(base, app, started["loop"], started["stop"], thread)
