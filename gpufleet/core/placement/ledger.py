"""Mutable free-memory bookkeeping built once from a :class:`ClusterSnapshot`.

Placing many replicas (`gpufleet plan`, benchmarks) applies each decision to
the ledger incrementally, so the next replica sees it without rebuilding
anything; only the workers a placement touched change. Plain classes with
slots: this is the hot loop of placement.
"""

from __future__ import annotations

from collections import Counter

from gpufleet.core.placement.cluster import ClaimSnapshot, ClusterSnapshot, WorkerSnapshot


class GpuState:
    __slots__ = ("worker", "index", "name", "total", "free", "claims", "exclusive", "holders", "unified", "host")

    def __init__(self, worker: str, index: int, name: str, total: int, reserved: int, unified: bool) -> None:
        self.worker = worker
        self.index = index
        self.name = name
        self.total = total
        self.free = total - reserved
        self.claims = 0  # number of instances holding memory here
        self.exclusive = False  # held by an instance that must not share (vLLM)
        self.holders: set[str] = set()  # deployments with an instance here
        self.unified = unified
        self.host: WorkerState | None = None  # set by the worker that owns it


class WorkerState:
    __slots__ = ("name", "ready", "labels", "ram_total", "ram_free", "gpus", "gpu_total", "gpu_claimed",
                 "replicas", "sources", "version", "snapshot")

    def __init__(self, w: WorkerSnapshot) -> None:
        self.name = w.name
        self.ready = w.ready
        self.labels = w.labels
        self.ram_total = w.memory_total
        self.ram_free = w.memory_total - w.ram_reserved
        self.gpus = [GpuState(w.name, g.index, g.name, g.memory_total, g.reserved, g.unified_memory)
                     for g in sorted(w.gpus, key=lambda g: g.index)]
        for g in self.gpus:
            g.host = self
        self.gpu_total = sum(g.total for g in self.gpus)
        self.gpu_claimed = sum(g.total - g.free for g in self.gpus)
        self.replicas: Counter[str] = Counter()  # deployment -> instances with a share here
        self.sources: set[str] = set()
        self.version = 0  # bumped on every change, so stale index entries can be recognised
        self.snapshot = w

    def gpu(self, index: int) -> GpuState | None:
        for g in self.gpus:
            if g.index == index:
                return g
        return None


class Ledger:
    """Free memory per GPU and per worker, after every claim in the snapshot."""

    def __init__(self, cluster: ClusterSnapshot) -> None:
        self.workers: dict[str, WorkerState] = {w.name: WorkerState(w) for w in cluster.workers}
        self.version = 0
        for claim in cluster.claims:
            self.apply(claim)

    def ordered(self) -> list[WorkerState]:
        return [self.workers[n] for n in sorted(self.workers)]

    def apply(self, claim: ClaimSnapshot) -> set[str]:
        """Take a claim's memory; returns the workers it touched. Claims on
        unknown workers or GPUs (a worker that left) are ignored: nothing to protect."""
        touched = set()
        shares = [(claim.worker, claim.vram_claim, claim.ram_claim)]
        shares += [(p.worker, p.vram_claim, p.ram_claim) for p in claim.parts]
        for worker_name, vram, ram in shares:
            w = self.workers.get(worker_name)
            if w is None:
                continue
            touched.add(worker_name)
            w.ram_free -= ram
            w.replicas[claim.deployment] += 1
            if claim.source:
                w.sources.add(claim.source)
            for index, amount in vram.items():
                g = w.gpu(int(index))
                if g is None:
                    continue
                g.free -= amount
                g.claims += 1
                g.exclusive = g.exclusive or claim.exclusive
                g.holders.add(claim.deployment)
                w.gpu_claimed += amount
                if g.unified:
                    w.ram_free -= amount
            for index in claim.gpu_indexes if worker_name == claim.worker else ():
                g = w.gpu(index)
                if g is not None:
                    g.holders.add(claim.deployment)
                    g.exclusive = g.exclusive or claim.exclusive
            w.version += 1
        self.version += 1
        return touched
