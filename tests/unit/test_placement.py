"""First-fit placement, with the arithmetic beside each case (MiB = 2^20 bytes)."""

from __future__ import annotations

import pytest

from gpufleet.core.placement import GpuSnapshot, Unplaceable, WorkerSnapshot, place
from gpufleet.core.schemas import Placement, ResourceEstimate

MiB = 1 << 20
GiB = 1 << 30


def est(vram_mib: int, cpu_mib: int, host_mib: int = 64) -> ResourceEstimate:
    return ResourceEstimate(gpu_vram=vram_mib * MiB, gpu_ram=host_mib * MiB, cpu_ram=cpu_mib * MiB)


def gpu(index: int, total_gib: float, claimed_mib: int = 0) -> GpuSnapshot:
    return GpuSnapshot(index=index, name="T", memory_total=int(total_gib * GiB), claimed=claimed_mib * MiB)


def worker(name: str, gpus: tuple[GpuSnapshot, ...] = (), ram_gib: float = 16, ready: bool = True,
           ram_claimed_mib: int = 0) -> WorkerSnapshot:
    return WorkerSnapshot(name=name, ready=ready, memory_total=int(ram_gib * GiB),
                          ram_claimed=ram_claimed_mib * MiB, gpus=gpus)


CASES = [
    # (id, workers, estimate, expected worker, expected gpus)
    ("gpu preferred over cpu",
     [worker("a"), worker("b", (gpu(0, 1),))], est(300, 300), "b", [0]),
    ("first gpu with room: gpu0 has 1024-800=224 free < 300, gpu1 has 1024",
     [worker("a", (gpu(0, 1, 800), gpu(1, 1)))], est(300, 300), "a", [1]),
    ("exactly full fits: 1024-724=300 free, need 300",
     [worker("a", (gpu(0, 1, 724),))], est(300, 300), "a", [0]),
    ("gpu full -> cpu of first ready worker: 1024-800=224 < 300",
     [worker("a"), worker("b", (gpu(0, 1, 800),))], est(300, 300), "a", []),
    ("not-ready worker skipped",
     [worker("a", (gpu(0, 80),), ready=False), worker("b", (gpu(0, 80),))], est(300, 300), "b", [0]),
    ("host RAM for the gpu placement counts: 1 GiB - 990 MiB claimed = 34 MiB < 64",
     [worker("a", (gpu(0, 80),), ram_gib=1, ram_claimed_mib=990), worker("b", (gpu(0, 80),))],
     est(300, 300), "b", [0]),
]


@pytest.mark.parametrize(("workers", "estimate", "where", "gpus"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_place(workers: list[WorkerSnapshot], estimate: ResourceEstimate, where: str, gpus: list[int]) -> None:
    result = place(workers, estimate)
    assert isinstance(result, Placement)
    assert result.worker == where
    assert result.gpu_indexes == gpus
    if gpus:
        assert result.vram_claim == {gpus[0]: estimate.gpu_vram}
        assert result.ram_claim == estimate.gpu_ram
    else:
        assert result.vram_claim == {}
        assert result.ram_claim == estimate.cpu_ram


def test_unplaceable_gives_reason_per_worker() -> None:
    # a: not ready; b: GPU 1024-1000=24 MiB free < 300 and RAM 1 GiB < 2000 MiB
    workers = [worker("a", ready=False), worker("b", (gpu(0, 1, 1000),), ram_gib=1)]
    result = place(workers, est(300, 2000))
    assert isinstance(result, Unplaceable)
    assert set(result.reasons) == {"a", "b"}
    assert "not ready" in result.reasons["a"]
    assert "largest free 0.02 GiB" in result.reasons["b"]
    assert "needs 1.95 GiB RAM" in result.reasons["b"]
    assert result.message().startswith("a: not ready")


def test_no_workers_message() -> None:
    result = place([], est(1, 1))
    assert isinstance(result, Unplaceable)
    assert "no workers registered" in result.message()


def test_unknown_estimate_goes_to_first_ready_cpu_without_claim() -> None:
    result = place([worker("a", ready=False), worker("b", (gpu(0, 80),))], ResourceEstimate.unknown("x"))
    assert isinstance(result, Placement)
    assert (result.worker, result.gpu_indexes, result.ram_claim) == ("b", [], 0)


def test_repeated_placement_with_claims_never_overcommits() -> None:
    """Place 10 replicas of 300 MiB onto one 1 GiB GPU, feeding claims back:
    floor(1024 / 300) = 3 fit on the GPU, the remaining 7 go to CPU (16 GiB RAM)."""
    claimed = 0
    ram = 0
    on_gpu = 0
    for _ in range(10):
        w = worker("a", (gpu(0, 1, claimed // MiB),), ram_claimed_mib=ram // MiB)
        p = place([w], est(300, 300))
        assert isinstance(p, Placement)
        if p.gpu_indexes:
            claimed += p.vram_claim[0]
            on_gpu += 1
        ram += p.ram_claim
        assert claimed <= GiB
    assert on_gpu == 3
