"""The process runtime: each backend is a process of the node, in its own session.

This is how gpufleet ran every backend before containers, and what laptops and
machines without Docker keep using. The low-level work (spawn, /proc checks,
SIGTERM then SIGKILL to the process group) is in :mod:`gpufleet.node.processes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpufleet.node import oom, processes
from gpufleet.node.runtimes import ExitStatus, RuntimeName, Started, StartFailed, StartRequest

if TYPE_CHECKING:
    from gpufleet.node.registry import BackendRecord


class ProcessRuntime:
    name: RuntimeName = "process"

    def __init__(self) -> None:
        #: pid -> its memory cgroup and OOM-kill count when last seen alive (the verdict at exit)
        self._oom: dict[int, oom.OomWatch | None] = {}

    def start(self, request: StartRequest) -> Started:
        try:
            pid, start_time = processes.spawn(request.command, request.env, request.log_path, cwd=request.node.home)
        except (OSError, RuntimeError) as exc:
            raise StartFailed(f"could not start {request.command[0]}: {exc}") from exc
        return Started(pid, start_time)

    def is_alive(self, record: BackendRecord) -> bool:
        alive = processes.is_alive(record.pid, record.start_time)
        if alive:
            self._oom[record.pid] = oom.watch(record.pid)
        return alive

    def stop(self, record: BackendRecord, grace: float) -> bool:
        self._oom.pop(record.pid, None)
        stopped = processes.terminate(record.pid, record.start_time, grace)
        processes.reap_children()
        return stopped

    def exit_status(self, record: BackendRecord) -> ExitStatus | None:
        """Known only for children of this agent process (a backend adopted after a
        restart is not our child: its exit code is gone with it)."""
        code = processes.exit_code(record.pid)
        verdict = oom.verdict(self._oom.pop(record.pid, None)) if code is None or code < 0 else None
        if code is None and verdict is None:
            return None
        return ExitStatus(code, oom_killed=verdict is not None, oom_verdict=verdict)

    def discard(self, record: BackendRecord) -> None:
        processes.reap_children()
