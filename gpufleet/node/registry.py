"""The node's record of the backend processes it started.

Backends outlive the flow runs that launch them (and the agent itself), so each
one is written to `<node home>/backends/<instance id>.json` before the flow
returns: pid, the process start time (to tell a reused pid from ours), port,
log file and command. A restarted agent reads these files to re-adopt its
backends; nothing it started is ever unknown to it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

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


class BackendRegistry:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def _path(self, instance_id: int) -> Path:
        return self.directory / f"{instance_id}.json"

    def save(self, record: BackendRecord) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a record."""
        path = self._path(record.instance_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        os.replace(tmp, path)

    def get(self, instance_id: int) -> BackendRecord | None:
        path = self._path(instance_id)
        try:
            return BackendRecord.model_validate_json(path.read_text())
        except FileNotFoundError:
            return None

    def remove(self, instance_id: int) -> None:
        self._path(instance_id).unlink(missing_ok=True)

    def all(self) -> list[BackendRecord]:
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(BackendRecord.model_validate_json(path.read_text()))
            except (OSError, ValueError, json.JSONDecodeError):
                continue  # a stray file is not ours to interpret
        return records

    def used_ports(self) -> set[int]:
        return {r.port for r in self.all()}
