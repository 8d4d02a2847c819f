"""Mutable free-memory bookkeeping built once from a :class:`ClusterSnapshot`.

Placing many replicas (`gpufleet plan`, benchmarks) applies each decision to
the ledger incrementally, so the next replica sees it without rebuilding
anything; only the workers a placement touched change. Claims can also be
released again (:meth:`Ledger.release` is the exact inverse of
:meth:`Ledger.apply`), and workers added, replaced or removed, so a long-lived
ledger follows the cluster (:mod:`gpufleet.core.placement.live`).

Every change appends the names of the workers it touched to :attr:`Ledger.log`,
so a :class:`~gpufleet.core.placement.engine.Placer` that keeps an index over
the ledger refreshes just those workers when it is used again; membership
changes (a worker added, removed or replaced) bump :attr:`Ledger.topology`,
which tells placers that their filter results are stale. Plain classes with
slots: this is the hot loop of placement.
"""

from __future__ import annotations

from gpufleet.core.placement.cluster import ClaimSnapshot, ClusterSnapshot, WorkerSnapshot


def _add(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _drop(counts: dict[str, int], key: str) -> None:
    """One fewer; the key goes at zero, so ``key in counts`` means "holds some"."""
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


class GpuState:
    __slots__ = ("worker", "index", "name", "total", "free", "claims", "exclusive", "n_exclusive", "holders",
                 "unified", "host")

    def __init__(self, worker: str, index: int, name: str, total: int, reserved: int, unified: bool,
                 used_outside: int = 0) -> None:
        self.worker = worker
        self.index = index
        self.name = name
        self.total = total
        # Memory other programs hold is as unavailable as reserved memory (GPUStack #2852 ignored it).
        self.free = total - max(reserved, 0) - max(used_outside, 0)
        self.claims = 0  # number of instances holding memory here
        self.exclusive = False  # held by an instance that must not share (vLLM)
        self.n_exclusive = 0  # how many such instances (exclusive is n_exclusive > 0)
        self.holders: dict[str, int] = {}  # deployment -> its instances here (plain dicts: cheap to build)
        self.unified = unified
        self.host: WorkerState | None = None  # set by the worker that owns it


class WorkerState:
    __slots__ = ("name", "ready", "labels", "ram_total", "ram_free", "gpus", "gpu_total", "gpu_claimed",
                 "replicas", "sources", "version", "snapshot", "_by_index")

    def __init__(self, w: WorkerSnapshot) -> None:
        self.name = w.name
        self.ready = w.ready
        self.labels = w.labels
        self.ram_total = w.memory_total
        self.ram_free = w.memory_total - w.ram_reserved
        self.gpus = [GpuState(w.name, g.index, g.name, g.memory_total, g.reserved, g.unified_memory,
                              g.used_outside)
                     for g in sorted(w.gpus, key=lambda g: g.index)]
        for g in self.gpus:
            g.host = self
        self._by_index = {g.index: g for g in self.gpus}
        self.gpu_total = sum(g.total for g in self.gpus)
        self.gpu_claimed = sum(g.total - g.free for g in self.gpus)
        self.replicas: dict[str, int] = {}  # deployment -> instances with a share here
        self.sources: dict[str, int] = {}  # model source -> instances of it here
        self.version = 0  # bumped on every change, so stale index entries can be recognised
        self.snapshot = w

    def gpu(self, index: int) -> GpuState | None:
        return self._by_index.get(index)


class Ledger:
    """Free memory per GPU and per worker, after every claim in the snapshot."""

    def __init__(self, cluster: ClusterSnapshot) -> None:
        self.workers: dict[str, WorkerState] = {w.name: WorkerState(w) for w in cluster.workers}
        self.version = 0  # bumped by every claim taken or released
        self.topology = 0  # bumped when workers are added, removed or replaced
        #: Names of touched workers, oldest first; entry i has absolute position log_base + i.
        self.log: list[str] = []
        self.log_base = 0
        self._ordered: list[WorkerState] | None = None
        for claim in cluster.claims:
            self.apply(claim)

    def ordered(self) -> list[WorkerState]:
        if self._ordered is None:
            self._ordered = [self.workers[n] for n in sorted(self.workers)]
        return list(self._ordered)

    @property
    def log_end(self) -> int:
        """Absolute position after the newest log entry."""
        return self.log_base + len(self.log)

    def changed_since(self, position: int) -> set[str] | None:
        """Workers touched since ``position`` (an earlier :attr:`log_end`); None when the
        log was trimmed past it (the caller must then treat every worker as changed)."""
        if position < self.log_base:
            return None
        return set(self.log[position - self.log_base:])

    def trim_log(self, keep_from: int) -> None:
        """Forget entries before absolute position ``keep_from`` (readers behind it rebuild)."""
        cut = min(max(keep_from - self.log_base, 0), len(self.log))
        if cut:
            del self.log[:cut]
            self.log_base += cut

    # ------------------------------------------------------------ claims

    def apply(self, claim: ClaimSnapshot) -> set[str]:
        """Take a claim's memory; returns the workers it touched. Claims on
        unknown workers or GPUs (a worker that left) are ignored: nothing to protect."""
        return self._change(claim, +1)

    def release(self, claim: ClaimSnapshot) -> set[str]:
        """Give a claim's memory back: the exact inverse of :meth:`apply` of the same claim."""
        return self._change(claim, -1)

    def _change(self, claim: ClaimSnapshot, sign: int) -> set[str]:
        touched = set()
        shares = [(claim.worker, claim.vram_claim, claim.ram_claim)]
        shares += [(p.worker, p.vram_claim, p.ram_claim) for p in claim.parts]
        dep = claim.deployment
        for worker_name, vram, ram in shares:
            w = self.workers.get(worker_name)
            if w is None:
                continue
            touched.add(worker_name)
            w.ram_free -= sign * ram
            if sign > 0:
                _add(w.replicas, dep)
                if claim.source:
                    _add(w.sources, claim.source)
            else:
                _drop(w.replicas, dep)
                if claim.source:
                    _drop(w.sources, claim.source)
            for index, amount in vram.items():
                g = w.gpu(int(index))
                if g is None:
                    continue
                g.free -= sign * amount
                g.claims += sign
                w.gpu_claimed += sign * amount
                if g.unified:
                    w.ram_free -= sign * amount
                self._hold(g, dep, claim.exclusive, sign)
            if worker_name == claim.worker:  # GPUs held without a VRAM claim (an unknown estimate)
                for index in claim.gpu_indexes:
                    if index not in vram and (g := w.gpu(index)) is not None:
                        self._hold(g, dep, claim.exclusive, sign)
            w.version += 1
            self.log.append(worker_name)
        self.version += 1
        return touched

    @staticmethod
    def _hold(g: GpuState, deployment: str, exclusive: bool, sign: int) -> None:
        if sign > 0:
            _add(g.holders, deployment)
        else:
            _drop(g.holders, deployment)
        if exclusive:
            g.n_exclusive += sign
            g.exclusive = g.n_exclusive > 0

    # ------------------------------------------------------------ workers

    def put_worker(self, w: WorkerSnapshot, claims: list[ClaimSnapshot] = ()) -> None:  # type: ignore[assignment]
        """Add a worker, or replace one (new GPUs, labels, readiness, reserved memory), then
        apply ``claims``: the claims held on it (a replaced worker starts from its snapshot)."""
        self.workers[w.name] = WorkerState(w)
        self._membership_changed(w.name)
        for claim in claims:
            self.apply(claim)

    def remove_worker(self, name: str) -> None:
        if self.workers.pop(name, None) is not None:
            self._membership_changed(name)

    def set_ready(self, name: str, ready: bool) -> None:
        """A heartbeat arrived or stopped: readiness is a filter, so placers re-filter."""
        w = self.workers.get(name)
        if w is not None and w.ready != ready:
            w.ready = ready
            w.snapshot = w.snapshot.model_copy(update={"ready": ready})
            w.version += 1
            self._membership_changed(name)

    def _membership_changed(self, name: str) -> None:
        self._ordered = None
        self.topology += 1
        self.version += 1
        self.log.append(name)
