"""The process runtime: each backend is a process of the node, in its own session.

This is how gpufleet ran every backend before containers, and what laptops and
machines without Docker keep using. The low-level work (spawn, /proc checks,
SIGTERM then SIGKILL to the process group) is in :mod:`gpufleet.node.processes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpufleet.node import processes
from gpufleet.node.runtimes import ExitStatus, RuntimeName, Started, StartFailed, StartRequest

if TYPE_CHECKING:
    from gpufleet.node.registry import BackendRecord


class ProcessRuntime:
    name: RuntimeName = "process"

    def start(self, request: StartRequest) -> Started:
        try:
            pid, start_time = processes.spawn(request.command, request.env, request.log_path, cwd=request.node.home)
        except (OSError, RuntimeError) as exc:
            raise StartFailed(f"could not start {request.command[0]}: {exc}") from exc
        return Started(pid, start_time)

    def is_alive(self, record: BackendRecord) -> bool:
        return processes.is_alive(record.pid, record.start_time)

    def stop(self, record: BackendRecord, grace: float) -> bool:
        stopped = processes.terminate(record.pid, record.start_time, grace)
        processes.reap_children()
        return stopped

    def exit_status(self, record: BackendRecord) -> ExitStatus | None:
        """Known only for children of this agent process (a backend adopted after a
        restart is not our child: its exit code is gone with it)."""
        code = processes.exit_code(record.pid)
        return None if code is None else ExitStatus(code)

    def discard(self, record: BackendRecord) -> None:
        processes.reap_children()
