"""Tables and JSON for the CLI."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from gpufleet.core.schemas import DeploymentView, EngineInstall, InstanceView, WorkerView
from gpufleet.core.states import InstanceState

# Pipes and files get wide lines: a table wrapped at 80 columns is hard to read or grep.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def print_json(items: list[BaseModel] | BaseModel) -> None:
    data: Any = (
        [i.model_dump(mode="json") for i in items] if isinstance(items, list) else items.model_dump(mode="json")
    )
    print(json.dumps(data, indent=2))


def deployments_table(deps: list[DeploymentView]) -> Table:
    t = Table("NAME", "SOURCE", "REPLICAS", "READY", "BACKEND", "STATE", box=None)
    for d in deps:
        t.add_row(d.name, d.source.describe(), str(d.replicas), str(d.ready_replicas), d.backend, d.state)
    return t


def restarts_note(inst: InstanceView, now: datetime | None = None) -> str:
    """The RESTARTS column: the count, whether it is crash-looping, and when the next restart
    comes (``3, crash-looping, restarting in 40 s, attempt 4``)."""
    parts = [str(inst.restart_count)]
    if inst.crash_looping and inst.state in (InstanceState.ERROR, InstanceState.STARTING, InstanceState.DOWNLOADING):
        parts.append("crash-looping")
    if inst.state == InstanceState.ERROR and inst.next_restart_at is not None:
        due = inst.next_restart_at if inst.next_restart_at.tzinfo else inst.next_restart_at.replace(tzinfo=timezone.utc)
        wait = max(0.0, (due - (now or datetime.now(timezone.utc))).total_seconds())
        parts.append(f"restarting in {wait:.0f} s, attempt {inst.restart_count + 1}" if wait >= 0.5
                     else f"restarting now, attempt {inst.restart_count + 1}")
    return ", ".join(parts)


def instances_table(instances: list[InstanceView], now: datetime | None = None) -> Table:
    t = Table("ID", "NAME", "DEPLOYMENT", "STATE", "MESSAGE", "WORKER", "GPUS", "PORT", "PID", "RESTARTS", box=None)
    for i in instances:
        state = i.state + (" (deleting)" if i.deleting else "")
        message = i.state_message.splitlines()[0] if i.state_message else ""
        t.add_row(
            str(i.id), i.name, i.deployment, state, message, i.worker or "-",
            ",".join(map(str, i.gpu_indexes)) or "-", str(i.port or "-"), str(i.pid or "-"),
            restarts_note(i, now),
        )
    return t


def engines_summary(engines: list[EngineInstall]) -> str:
    """``llama.cpp b11434 (cpu, cuda); vllm 0.32.0 (cpu), 0.31.0 (cuda)``: per engine its
    versions, each with the device kinds it can use, in the order the node reported them."""
    versions: dict[str, list[str]] = {}
    for e in engines:
        versions.setdefault(e.engine, []).append(f"{e.version} ({', '.join(e.devices) or 'no devices'})")
    return "; ".join(f"{name} {', '.join(vs)}" for name, vs in versions.items()) or "-"


def workers_table(workers: list[WorkerView]) -> Table:
    t = Table("NAME", "READY", "GPUS", "USED OUTSIDE GPUFLEET", "CPUS", "MEMORY", "ENGINES", "RUNTIME", "CAN ALSO",
              "ADDRESS", box=None)
    for w in workers:
        gpus = ", ".join(f"{g.index}:{g.name}{' (virtual)' if g.virtual else ''}" for g in w.gpus) or "-"
        outside = ", ".join(f"{g.index}:{g.memory_used_outside / (1 << 30):.1f} GiB" for g in w.gpus
                            if g.memory_used_outside) or "-"
        t.add_row(w.name, "yes" if w.ready else "no", gpus, outside, str(w.cpu_count),
                  f"{w.memory_total / (1 << 30):.1f} GiB", engines_summary(w.engines), w.runtime,
                  ", ".join(w.capabilities) or "-", w.address)
    return t
