"""What a node has: NVIDIA GPUs through NVML, plus GPUs declared as virtual.

A machine without the NVIDIA library or driver is a CPU-only node, not an
error. Virtual GPUs (`--virtual-gpus "A100-80G:4"` or a JSON file) let tests
and capacity planning describe GPUs a machine does not have; they are the only
simulated hardware in gpufleet.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from gpufleet.core.schemas import GpuInfo

log = logging.getLogger(__name__)
GiB = 1 << 30
_SHORT_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+?)-(?P<mem>\d+(?:\.\d+)?)G(?:iB)?:(?P<count>\d+)$")


class VirtualGpuError(ValueError):
    pass


class _VirtualGpuEntry(BaseModel):
    name: str
    memory_gib: float = Field(gt=0)
    count: int = Field(default=1, ge=1, le=1024)
    #: memory other programs hold on each of these GPUs (what NVML would report), for tests and planning
    used_outside_gib: float = Field(default=0, ge=0)


def used_outside(used: int, own_processes: dict[int, int], own_pids: frozenset[int] | set[int]) -> int:
    """Bytes of a GPU held by processes gpufleet did not start: NVML's used memory minus what
    the node's own backends hold there (their per-process figures), never below zero.
    ``own_processes`` maps pid -> bytes for the processes NVML lists on the GPU."""
    ours = sum(b for pid, b in own_processes.items() if pid in own_pids)
    return max(used - ours, 0)


def detect_nvidia_gpus(own_pids: frozenset[int] = frozenset()) -> list[GpuInfo]:
    """The node's NVIDIA GPUs with their total memory and, per GPU, what processes other
    than the node's backends (``own_pids``) use: NVML's used memory minus our processes'."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("no NVIDIA GPUs usable here (%s); this is a CPU node", exc)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                procs = {int(p.pid): int(p.usedGpuMemory or 0)
                         for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
            except pynvml.NVMLError:
                procs = {}
            gpus.append(GpuInfo(index=i, name=str(name), memory_total=int(mem.total),
                                memory_used_outside=used_outside(int(mem.used), procs, own_pids)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def parse_virtual_gpus(spec: str, first_index: int = 0) -> list[GpuInfo]:
    """`NAME-<GiB>G:<count>[,…]` (e.g. "A100-80G:4,T4-16G:1") or a path to a JSON
    list of {"name", "memory_gib", "count"}."""
    entries: list[_VirtualGpuEntry]
    if os.path.isfile(spec):
        try:
            entries = TypeAdapter(list[_VirtualGpuEntry]).validate_json(Path(spec).read_bytes())
        except ValidationError as exc:
            raise VirtualGpuError(f"virtual GPU file {spec} is invalid: {exc}") from exc
    else:
        entries = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            m = _SHORT_SPEC.match(part)
            if not m:
                raise VirtualGpuError(
                    f"invalid virtual GPU spec {part!r}: use NAME-<GiB>G:<count>, e.g. A100-80G:4, "
                    "or a JSON file path"
                )
            entries.append(
                _VirtualGpuEntry(name=m["name"], memory_gib=float(m["mem"]), count=int(m["count"]))
            )
    gpus = []
    index = first_index
    for entry in entries:
        for _ in range(entry.count):
            gpus.append(
                GpuInfo(
                    index=index,
                    name=f"{entry.name}-{entry.memory_gib:g}G",
                    memory_total=int(entry.memory_gib * GiB),
                    virtual=True,
                    memory_used_outside=int(entry.used_outside_gib * GiB),
                )
            )
            index += 1
    return gpus


_SIZE = re.compile(r"^(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]?)(?:i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, what: str = "size") -> int:
    """Memory a node reserves (``--reserved-ram 2G``, ``--reserved-vram 512MiB``): bytes,
    binary units (K, M, G, T = 2^10 .. 2^40, with or without "iB")."""
    m = _SIZE.match(text.strip())
    if not m:
        raise VirtualGpuError(f"invalid {what} {text!r}: use a number with K, M, G or T, e.g. 2G or 512MiB")
    return int(float(m["n"]) * _UNITS[m["unit"].upper()])


def total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gpus_used_outside(virtual_spec: str | None, own_pids: frozenset[int] = frozenset()) -> dict[int, int]:
    """Per GPU index, the bytes other programs hold now (sent with every heartbeat, so
    placement follows what the GPU really has free): NVML for real GPUs, and for declared
    ones what their JSON file says now (a file can change; an inline spec never does)."""
    gpus = detect_nvidia_gpus(own_pids)
    if virtual_spec:
        gpus += parse_virtual_gpus(virtual_spec, first_index=len(gpus))
    return {g.index: g.memory_used_outside for g in gpus}


def node_gpus(virtual_spec: str | None) -> list[GpuInfo]:
    gpus = detect_nvidia_gpus()
    if virtual_spec:
        gpus += parse_virtual_gpus(virtual_spec, first_index=len(gpus))
    return gpus
