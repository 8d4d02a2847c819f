"""The node's record of the backend processes it started.

Backends outlive the flow runs that launch them (and the agent itself), so each
one is written to `<node home>/backends/<instance id>.json` before the flow
returns: pid, the process start time (to tell a reused pid from ours), port,
log file and command. The llama.cpp RPC servers a node runs for a distributed
instance (one per GPU) are records too, `<instance id>.rpc<gpu>.json`. A restarted agent reads these files to re-adopt its
backends; nothing it started is ever unknown to it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Literal

from pydantic import BaseModel


class BackendRecord(BaseModel):
    instance_id: int
    instance_name: str
    pid: int
    start_time: int  # /proc/<pid>/stat field 22 (clock ticks since boot)
    port: int
    log_path: str
    command: list[str]
    stopping: bool = False  # set before a deliberate stop, so supervision does not report it
    role: Literal["server", "rpc"] = "server"  # the instance's llama-server, or an RPC server for one GPU
    gpu_index: int | None = None  # the GPU an RPC server lends
    engine: str = "llama.cpp"
    #: from the engine's launch description: polled in order until one answers 200
    health_paths: list[str] = ["/health", "/v1/models"]
    readiness_timeout_s: float = 180.0
    #: what runs it (docs/runtimes.md): a process of the node, or a container whose main process is `pid`
    runtime: Literal["process", "docker"] = "process"
    container_id: str | None = None
    #: the health path that answered once the backend became healthy: from then on the agent
    #: probes it, and a backend that stops answering (hung, SIGSTOP) is reported ERROR
    healthy_path: str | None = None

    @property
    def key(self) -> str:
        return str(self.instance_id) if self.role == "server" else f"{self.instance_id}.rpc{self.gpu_index}"

    def describe(self) -> str:
        return "backend" if self.role == "server" else f"rpc-server for GPU {self.gpu_index}"


class BackendRegistry:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def save(self, record: BackendRecord) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a record."""
        path = self._path(record.key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        os.replace(tmp, path)

    def read(self, key: str) -> BackendRecord | None:
        try:
            return BackendRecord.model_validate_json(self._path(key).read_text())
        except FileNotFoundError:
            return None

    def get(self, instance_id: int) -> BackendRecord | None:
        """The instance's llama-server on this node."""
        return self.read(str(instance_id))

    def get_rpc(self, instance_id: int, gpu_index: int) -> BackendRecord | None:
        return self.read(f"{instance_id}.rpc{gpu_index}")

    def of_instance(self, instance_id: int) -> list[BackendRecord]:
        """Everything this node runs for the instance: its server first, then RPC servers."""
        return [r for r in self.all() if r.instance_id == instance_id]

    def remove(self, record: BackendRecord) -> None:
        self._path(record.key).unlink(missing_ok=True)

    def all(self) -> list[BackendRecord]:
        records = []
        for path in self.directory.glob("*.json"):
            try:
                records.append(BackendRecord.model_validate_json(path.read_text()))
            except (OSError, ValueError, json.JSONDecodeError):
                continue  # a stray file is not ours to interpret
        return sorted(records, key=lambda r: (r.instance_id, r.role != "server", r.gpu_index or 0))

    def used_ports(self) -> set[int]:
        return {r.port for r in self.all()}
