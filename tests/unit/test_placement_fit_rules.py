"""Issue 12's placement rules, with the arithmetic beside each case.

- binpack is best fit: the GPU left with the least memory after the claim, anywhere in
  the cluster, then worker utilisation; spread is unchanged.
- without --cpu-offloading, a replica that fits no GPU on workers that have GPUs stays
  PENDING with the reason; a worker without GPUs still runs llama.cpp on its CPU.

The estimator is the linear one of test_placement.py: a model of n layers of L GiB
needs n × L + 0.5 GiB on one GPU and 0.25 GiB of host RAM beside it; on the CPU
n × L + 0.25 GiB.
"""

from __future__ import annotations

import pytest

from gpufleet.core.placement import ClusterSnapshot, Unplaceable, place, plan
from gpufleet.core.placement_spec import Placement
from tests.unit.test_placement import M7, linear_estimator, model, placed, req

GiB = 1 << 30


def gpu(index: int, gib: float, reserved: float = 0) -> dict[str, object]:
    return {"index": index, "memory_total": int(gib * GiB), "reserved": int(reserved * GiB)}


def worker(name: str, *gpus: dict[str, object], ram: int = 64) -> dict[str, object]:
    return {"name": name, "memory_total": ram * GiB, "gpus": list(gpus)}


def snap(*workers: dict[str, object]) -> ClusterSnapshot:
    return ClusterSnapshot.model_validate({"workers": list(workers)})


# (id, cluster, expected worker and GPU for one 4.5 GiB replica (M7) under binpack)
BINPACK_CASES = [
    # big: 25 GiB card empty + 80 GiB card with 78 GiB reserved (2 free: too small) -> utilisation
    # (78 + 4.5) / 105 = 79 %; small: one empty 16 GiB card -> 4.5 / 16 = 28 %. The old binpack took
    # the fuller worker's 25 GiB card (20.5 GiB left); best fit takes the 16 GiB card (11.5 left).
    ("tighter card on the emptier worker", snap(worker("big", gpu(0, 25), gpu(1, 80, reserved=78)),
                                               worker("small", gpu(0, 16))), ("small", [0])),
    # big's GPU 1 has 10 GiB free: 10 - 4.5 = 5.5 GiB left, tighter than small's 11.5.
    ("tightest is a partly used card", snap(worker("big", gpu(0, 25), gpu(1, 80, reserved=70)),
                                            worker("small", gpu(0, 16))), ("big", [1])),
    # equal cards (16 GiB, 11.5 left on each): worker utilisation decides -- b has another
    # GPU with 46 of 48 GiB reserved (2 free, too small): (46 + 4.5) / 64 = 79 % > a's 4.5 / 16 = 28 %.
    ("equal fit, fuller worker", snap(worker("a", gpu(0, 16)), worker("b", gpu(0, 16), gpu(1, 48, reserved=46))),
     ("b", [0])),
    # a 4 GiB card cannot hold 4.5 GiB: the next tightest, 8 GiB (3.5 left)
    ("too small is skipped", snap(worker("a", gpu(0, 4)), worker("b", gpu(0, 8)), worker("c", gpu(0, 80))),
     ("b", [0])),
]


@pytest.mark.parametrize(("name", "cluster", "expected"), BINPACK_CASES, ids=[c[0] for c in BINPACK_CASES])
def test_binpack_takes_the_tightest_fitting_gpu(name: str, cluster: ClusterSnapshot,
                                                expected: tuple[str, list[int]]) -> None:
    p = placed(place(cluster, req(M7, strategy="binpack"), linear_estimator))
    assert (p.worker, p.gpu_indexes) == expected
    assert p.vram_claim == {expected[1][0]: int(4.5 * GiB)}


def test_binpack_fills_the_tight_card_before_opening_a_large_one() -> None:
    """16 GiB and 80 GiB cards on two workers, 4.5 GiB replicas: floor(16 / 4.5) = 3 fill the 16 GiB
    card (16 - 13.5 = 2.5 left) before the 80 GiB card is touched."""
    results = plan(snap(worker("large", gpu(0, 80)), worker("small", gpu(0, 16))), req(M7, strategy="binpack"), 4,
                   linear_estimator)
    assert [placed(r).worker for r in results] == ["small", "small", "small", "large"]


def test_spread_is_unchanged() -> None:
    """Spread still takes the emptiest worker: big at (78 + 4.5) / 105 = 79 % vs small at 28 %,
    so small; the second replica avoids small (replica penalty −25) and goes to big's 25 GiB card."""
    cluster = snap(worker("big", gpu(0, 25), gpu(1, 80, reserved=78)), worker("small", gpu(0, 16)))
    results = plan(cluster, req(M7), 2, linear_estimator)
    assert [(placed(r).worker, placed(r).gpu_indexes) for r in results] == [("small", [0]), ("big", [0])]


def test_no_silent_cpu_placement_on_a_gpu_worker() -> None:
    """70 × 1 GiB (70.5 GiB per GPU) on a 2 × 24 GiB worker with 512 GiB RAM: 70.25 GiB would fit
    its RAM, but the deployment did not allow --cpu-offloading, so it stays PENDING and says why."""
    cluster = snap(worker("gpu-host", gpu(0, 24), gpu(1, 24), ram=512))
    r = place(cluster, req(model(70, 1)), linear_estimator)
    assert isinstance(r, Unplaceable)
    assert "not on its CPU: it has GPUs (allow the CPU with --cpu-offloading)" in r.reasons["gpu-host"]
    assert "does not fit on 2 GPUs either" in r.message()


def test_cpu_offloading_allows_the_gpu_hosts_cpu() -> None:
    """The same with --cpu-offloading: partial offload first (as many layers on the GPUs as fit:
    per GPU layers × 1 + 0.5 <= 24 -> 23 + 23 = 46 of 70 layers), the rest on the CPU."""
    cluster = snap(worker("gpu-host", gpu(0, 24), gpu(1, 24), ram=512))
    p = placed(place(cluster, req(model(70, 1), cpu_offloading=True), linear_estimator))
    assert p.stage == "offload" and p.offloaded and p.gpu_layers == 46


def test_a_cpu_only_worker_still_serves_llama_cpp() -> None:
    """The embedded demo: one worker, no GPUs, 16 GiB; a 4 GiB model runs on its CPU (4.25 GiB)."""
    p = placed(place(snap(worker("laptop", ram=16)), req(M7), linear_estimator))
    assert (p.worker, p.stage, p.gpu_indexes, p.ram_claim) == ("laptop", "cpu", [], int(4.25 * GiB))


def test_a_model_too_big_for_the_gpus_goes_to_a_cpu_only_worker() -> None:
    """GPU worker (24 GiB) and a CPU-only worker (128 GiB): 30 × 1 GiB fits no GPU (30.5 > 24), and the
    GPU worker's CPU is not allowed, so the CPU-only worker takes it (30.25 <= 128)."""
    cluster = snap(worker("gpu-host", gpu(0, 24), ram=512), worker("cpu-host", ram=128))
    p = placed(place(cluster, req(model(30, 1)), linear_estimator))
    assert (p.worker, p.stage) == ("cpu-host", "cpu")


def test_vllm_on_gpu_workers_is_unaffected() -> None:
    """vLLM never had a CPU stage: a replica that fits still lands on a GPU."""
    r = place(snap(worker("h", gpu(0, 80))), req(M7, backend="vllm"), linear_estimator)
    assert isinstance(r, Placement) and r.stage == "single-gpu"
