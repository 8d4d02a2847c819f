"""Placement tables on cluster fixtures (tests/fixtures/clusters/*.json), with the
arithmetic beside each case.

The estimator here is a linear model that honours the estimation contract, so
the cases can be computed by hand and do not move when the real estimator is
refined: a model of ``n`` layers of ``L`` GiB each needs, on each GPU, its layers
× L + 0.5 GiB (CUDA context etc.), and on the host (CPU layers) × L + 0.25 GiB.
Layers are split over GPUs like llama.cpp does: contiguous ranges by cumulative
tensor-split fraction, rounded. vLLM claims 0.9 × card per GPU and needs
weights / TP + 2 GiB on each. A few tests at the end use the real estimator.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufleet.core.estimation import DeviceUsage, Estimate, EstimateOptions
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.placement import ClusterSnapshot, Ledger, PlacementRequest, Placer, Unplaceable, place, plan
from gpufleet.core.placement_spec import Placement, PlacementSpec

GiB = 1 << 30
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "clusters"
GPU_OVERHEAD = GiB // 2
HOST_OVERHEAD = GiB // 4


def cluster(name: str) -> ClusterSnapshot:
    return ClusterSnapshot.model_validate(json.loads((FIXTURES / f"{name}.json").read_text()))


def model(layers: int, layer_gib: float, heads: int = 32, vocab: int = 32000) -> ModelMetadata:
    per_layer = int(layer_gib * GiB)
    return ModelMetadata(format="gguf", architecture="llama", file_size=layers * per_layer,
                         tensor_bytes=layers * per_layer, layer_bytes=[per_layer] * layers, n_layers=layers,
                         n_heads=heads, vocab_size=vocab)


def layer_counts(n: int, split: tuple[float, ...]) -> list[int]:
    total, acc, prev, counts = sum(split), 0.0, 0, []
    for s in split:
        acc += s / total
        bound = round(acc * n)
        counts.append(bound - prev)
        prev = bound
    return counts


def linear_estimator(meta: ModelMetadata | None, o: EstimateOptions) -> Estimate:
    if meta is None:
        return Estimate.unknown(o.backend, "model metadata could not be read on the server")
    n, per_layer = meta.n_layers, meta.layer_bytes[0]
    if o.backend == "vllm":
        k = len(o.gpu_memory)
        if not k:
            return Estimate.unknown(o.backend, "vLLM needs GPUs")
        need = meta.tensor_bytes // k + 2 * GiB
        gpus = tuple(DeviceUsage(f"gpu:{i}", layers=n, weights=need) for i in range(k))
        return Estimate(known=True, backend="vllm", total_layers=n, gpu_layers=n, gpus=gpus,
                        claims=tuple(int(0.9 * m) for m in o.gpu_memory), host=DeviceUsage("cpu", overhead=HOST_OVERHEAD))
    gpu_layers = n if o.gpu_layers is None else o.gpu_layers
    if not o.gpu_memory:
        gpu_layers = 0
    counts = layer_counts(gpu_layers, o.tensor_split or tuple(float(m) for m in o.gpu_memory)) if o.gpu_memory else []
    gpus = tuple(DeviceUsage(f"gpu:{i}", layers=c, weights=c * per_layer, overhead=GPU_OVERHEAD)
                 for i, c in enumerate(counts))
    host = DeviceUsage("cpu", layers=n - gpu_layers, weights=(n - gpu_layers) * per_layer, overhead=HOST_OVERHEAD)
    return Estimate(known=True, backend=o.backend, total_layers=n, gpu_layers=gpu_layers, host=host, gpus=gpus,
                    claims=tuple(g.total for g in gpus))


def req(meta: ModelMetadata | None, backend: str = "llama.cpp", name: str = "d", **spec: object) -> PlacementRequest:
    return PlacementRequest(deployment=name, metadata=meta, backend=backend,
                            spec=PlacementSpec(**spec), source=f"model-{name}")  # type: ignore[arg-type]


def placed(r: Placement | Unplaceable) -> Placement:
    assert isinstance(r, Placement), r.message() if isinstance(r, Unplaceable) else r
    return r


M7 = model(32, 0.125)  # 32 × 0.125 = 4 GiB of weights: one GPU needs 4 + 0.5 = 4.5 GiB

CASES = [
    # (id, fixture, model, spec, replicas, expected [(worker, gpus)] in order)
    ("spread: equal GPUs -> lowest index, then the emptiest (80 > 75.5 free)",
     "8xH100-80G", M7, {}, 2, [("h100", [0]), ("h100", [1])]),
    ("binpack: the fullest GPU that fits (75.5 left on GPU 0 holds another 4.5)",
     "8xH100-80G", M7, {"strategy": "binpack"}, 2, [("h100", [0]), ("h100", [0])]),
    ("40 × 1 GiB on 2×24 GiB: 40.5 > 24 on one; split 1:1 -> 20 layers each = 20.5 ≤ 24",
     "2xRTX4090-24G", model(40, 1), {}, 1, [("rtx", [0, 1])]),
    ("mixed 16+24 GiB, 30 × 1 GiB: split ∝ free 16:24 -> 0.4×30 = 12 (12.5 ≤ 16) and 18 (18.5 ≤ 24)",
     "mixed-4080-4090", model(30, 1), {}, 1, [("mixed", [0, 1])]),
    ("no GPUs: CPU of the emptiest worker (64 GiB > 16 GiB): 4 + 0.25 = 4.25 GiB RAM",
     "cpu-only", M7, {}, 1, [("cpu-a", [])]),
    ("spread on two workers: node-b is empty (100 × (1 − 4.5/320) = 98.6); then node-a 100 × (1 − 60.6/320) = 81.1"
     " beats node-b 100 × (1 − 9/320) − 25 = 72.2",
     "two-workers-a100", M7, {}, 2, [("node-b", [0]), ("node-a", [1])]),
    ("binpack on two workers: node-a is fuller (56.1 GiB claimed) and keeps taking them",
     "two-workers-a100", M7, {"strategy": "binpack"}, 2, [("node-a", [0]), ("node-a", [0])]),
    ("worker selector zone=east keeps replicas on node-a",
     "two-workers-a100", M7, {"worker_selector": ["zone=east"]}, 2, [("node-a", [1]), ("node-a", [2])]),
    ("selector 'zone notin (east)' -> node-b only",
     "two-workers-a100", M7, {"worker_selector": ["zone notin (east)"]}, 1, [("node-b", [0])]),
    ("manual GPUs node-b:2,3 one each: disjoint single GPUs",
     "two-workers-a100", M7, {"gpu_selector": ["node-b:2", "node-b:3"]}, 2, [("node-b", [2]), ("node-b", [3])]),
    ("manual 4 GPUs, 2 per replica: two disjoint pairs",
     "two-workers-a100", M7, {"gpu_selector": ["node-b:0", "node-b:1", "node-b:2", "node-b:3"], "gpus_per_replica": 2},
     2, [("node-b", [0, 1]), ("node-b", [2, 3])]),
    ("manual with --overcommit: replicas share the one selected GPU (2 × 4.5 ≤ 80)",
     "two-workers-a100", M7, {"gpu_selector": ["node-b:1"], "overcommit": True}, 2, [("node-b", [1]), ("node-b", [1])]),
    ("distributed: 400 × 1 GiB; 5 GPUs need 80.5 > 80; 6 GPUs 67 + 0.5 ≤ 80: all of node-b (320 free) + 2 of node-a",
     "two-workers-a100", model(400, 1), {"distributed": True}, 1, [("node-b", [0, 1, 2, 3])]),
]


@pytest.mark.parametrize(("fixture", "meta", "spec", "replicas", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_placement_table(fixture: str, meta: ModelMetadata, spec: dict, replicas: int,
                         expected: list[tuple[str, list[int]]]) -> None:
    results = plan(cluster(fixture), req(meta, **spec), replicas, linear_estimator)
    assert [(placed(r).worker, placed(r).gpu_indexes) for r in results] == expected


def test_multi_gpu_claims_and_split() -> None:
    # mixed 16+24, 30 × 1 GiB: split (16/24 = 0.667, 1.0) -> 12 and 18 layers; claims 12.5 and 18.5 GiB
    p = placed(place(cluster("mixed-4080-4090"), req(model(30, 1)), linear_estimator))
    assert p.stage == "multi-gpu"
    assert p.tensor_split == [0.667, 1.0]
    assert p.vram_claim == {0: int(12.5 * GiB), 1: int(18.5 * GiB)}
    assert p.ram_claim == HOST_OVERHEAD


def test_distributed_parts() -> None:
    """400 layers split 1:1:1:1:1:1 -> 67, 66, 67, 67, 66, 67 layers (round of cumulative sixths);
    node-b has the most room (4 × 80 = 320 GiB) so it holds 4 GPUs and the main process; node-a's
    GPUs 1 and 2 (80 free each, GPU 0 has 23.9) are the RPC part. llama.cpp's device order puts
    RPC devices first: node-a:1, node-a:2, then node-b:0..3, so node-a gets 67, 66 and node-b
    67, 67, 66, 67 (its last GPU also holds the output layer in llama.cpp).
    Claims: 400 GiB + 6 × 0.5 GiB."""
    p = placed(place(cluster("two-workers-a100"), req(model(400, 1), distributed=True), linear_estimator))
    assert p.stage == "distributed"
    assert [(x.worker, x.gpu_indexes) for x in p.parts] == [("node-a", [1, 2])]
    assert p.devices() == [("node-a", 1), ("node-a", 2), ("node-b", 0), ("node-b", 1), ("node-b", 2), ("node-b", 3)]
    assert len(p.tensor_split) == 6
    assert [p.parts[0].vram_claim[i] // GiB for i in (1, 2)] == [67, 66]
    assert [p.vram_claim[i] // GiB for i in range(4)] == [67, 67, 66, 67]
    all_claims = sum(p.vram_claim.values()) + sum(p.parts[0].vram_claim.values())
    assert all_claims == 400 * GiB + 6 * GPU_OVERHEAD
    assert p.ram_claim == HOST_OVERHEAD  # on the main worker only


def test_partial_offload_bisects_gpu_layers() -> None:
    """60 × 1 GiB on 2×24 GiB with 32 GiB RAM, --cpu-offloading. On GPUs: L layers split 1:1,
    each GPU round(L/2) + 0.5 ≤ 24 -> at most 23 per GPU -> L = 46 (L = 47 gives round(23.5) = 24 -> 24.5).
    CPU: 60 − 46 = 14 layers + 0.25 = 14.25 GiB ≤ 32."""
    p = placed(place(cluster("2xRTX4090-24G"), req(model(60, 1), cpu_offloading=True), linear_estimator))
    assert (p.stage, p.gpu_layers, p.total_layers, p.offloaded) == ("offload", 46, 60, True)
    assert p.vram_claim == {0: int(23.5 * GiB), 1: int(23.5 * GiB)}
    assert p.ram_claim == int(14.25 * GiB)


def test_without_offload_it_says_why_for_each_stage() -> None:
    """60 × 1 GiB: one GPU needs 60.5 > 24; two GPUs need 60 + 2 × 0.5 = 61 > 48; the worker has GPUs,
    so its CPU is not tried without --cpu-offloading (with it: offload first, see the offload tests)."""
    r = place(cluster("2xRTX4090-24G"), req(model(60, 1)), linear_estimator)
    assert isinstance(r, Unplaceable)
    assert r.reasons["rtx"] == ("needs 60.5 GiB VRAM on one GPU, largest free 24.0 GiB; "
                                "does not fit on 2 GPUs either: needs 61.0 GiB VRAM over 2 GPUs, 48.0 GiB free on them; "
                                "not on its CPU: it has GPUs (allow the CPU with --cpu-offloading)")


def test_reasons_name_every_worker() -> None:
    """330 × 1 GiB, selector zone=east: node-a's 4 GPUs have 23.9 + 3 × 80 = 263.9 GiB free < 330 + 2,
    and its CPU 256 GiB < 330.25; node-b does not match; node-c is not ready."""
    r = place(cluster("two-workers-a100"), req(model(330, 1), worker_selector=["gpu=a100", "zone=east"]),
              linear_estimator)
    assert isinstance(r, Unplaceable)
    assert set(r.reasons) == {"node-a", "node-b", "node-c"}
    assert r.reasons["node-c"] == "not ready (no recent heartbeat)"
    assert r.reasons["node-b"] == "label selector 'zone=east' does not match (zone=west)"
    assert r.reasons["node-a"].startswith("needs 330.5 GiB VRAM on one GPU, largest free 80.0 GiB")
    assert r.message().startswith("node-a: needs 330.5 GiB")
    assert "node-b: label selector 'zone=east' does not match (zone=west); node-c: not ready" in r.message()


def test_issue_example_largest_free() -> None:
    """node-a GPU 0 has 80 − 56.1 = 23.9 GiB free; manual selection of only that GPU, a 41.2 GiB model
    (82 × 0.5 GiB = 41 + 0.5 = 41.5 GiB)."""
    r = place(cluster("two-workers-a100"), req(model(82, 0.5), gpu_selector=["node-a:0"]), linear_estimator)
    assert isinstance(r, Unplaceable)
    assert r.reasons["node-a"] == "needs 41.5 GiB VRAM on one GPU, largest free 23.9 GiB"
    assert r.reasons["node-b"] == "none of its GPUs is in the --gpu selection"


def test_manual_partition_runs_out_with_a_reason() -> None:
    r = plan(cluster("two-workers-a100"), req(M7, gpu_selector=["node-b:0", "node-b:1"], gpus_per_replica=2), 2,
             linear_estimator)
    assert placed(r[0]).gpu_indexes == [0, 1]
    assert isinstance(r[1], Unplaceable)
    assert "taken by other replicas of this deployment" in r[1].reasons["node-b"]


def test_apple_unified_memory_counts_vram_against_ram() -> None:
    """M2 Ultra: 192 GiB RAM shared with a 144 GiB GPU. A 4.5 GiB GPU claim plus 0.25 GiB host
    leaves 192 − 4.5 − 0.25 = 187.25 GiB of RAM."""
    snap = cluster("apple-m2-ultra")
    placer = Placer(snap, req(M7), linear_estimator)
    p = placed(placer.place())
    assert (p.worker, p.gpu_indexes) == ("mac", [0])
    assert placer.ledger.workers["mac"].ram_free == 192 * GiB - int(4.5 * GiB) - HOST_OVERHEAD


def test_vllm_tensor_parallel_divides_heads_and_vocab() -> None:
    """150 GiB weights, 40 heads: claims 0.9 × 80 = 72 GiB per GPU. TP1 needs 152 > 72; TP2 needs
    75 + 2 = 77 > 72; TP3 does not divide 40 heads; TP4 needs 37.5 + 2 = 39.5 ≤ 72 -> 4 GPUs."""
    meta = model(40, 3.75, heads=40, vocab=32000)  # 40 × 3.75 = 150 GiB
    p = placed(place(cluster("8xH100-80G"), req(meta, backend="vllm"), linear_estimator))
    assert p.gpu_indexes == [0, 1, 2, 3]
    assert p.exclusive and p.vram_claim == {i: int(0.9 * 80 * GiB) for i in range(4)}


def test_vllm_no_valid_tp_size() -> None:
    meta = model(40, 3.75, heads=7, vocab=32003)  # 7 heads: only TP 7 divides it, and not the 32003 vocabulary
    r = place(cluster("8xH100-80G"), req(meta, backend="vllm"), linear_estimator)
    assert isinstance(r, Unplaceable)
    assert "divides the model's 7 attention heads" in r.reasons["h100"]


def test_vllm_gpus_are_not_shared() -> None:
    """A llama.cpp instance on GPU 0 keeps vLLM off GPU 0; vLLM's GPU 1 then keeps llama.cpp off GPU 1."""
    ledger = Ledger(cluster("8xH100-80G"))
    small = placed(Placer(ledger, req(M7, name="small"), linear_estimator).place())
    assert small.gpu_indexes == [0]
    v = placed(Placer(ledger, req(model(10, 1), backend="vllm", name="v"), linear_estimator).place())
    assert v.gpu_indexes == [1] and v.exclusive
    more = Placer(ledger, req(M7, name="more", strategy="binpack"), linear_estimator).plan(2)
    assert [placed(p).gpu_indexes for p in more] == [[0], [0]]  # binpack would pick 1 (fuller) if it could


def test_unknown_estimate_places_without_claim_and_says_so() -> None:
    p = placed(place(cluster("two-workers-a100"), req(None), linear_estimator))
    assert (p.worker, p.gpu_indexes, p.ram_claim, p.vram_claim, p.estimate_known) == ("node-a", [], 0, {}, False)
    assert "estimate unknown (model metadata could not be read on the server)" in p.note


def test_no_workers_message() -> None:
    r = place(ClusterSnapshot(), req(M7), linear_estimator)
    assert isinstance(r, Unplaceable)
    assert "no workers registered" in r.message()


def test_unplaceable_message_groups_workers() -> None:
    r = Unplaceable({f"w{i}": "not ready (no recent heartbeat)" for i in range(5)} | {"x": "has no GPUs"})
    assert r.message() == "w0, w1, w2 and 2 more: not ready (no recent heartbeat); x: has no GPUs"


def test_repeated_placement_never_overcommits() -> None:
    """10 replicas of 4.5 GiB onto one 24 GiB GPU worker... (2×24 GiB): floor(24 / 4.5) = 5 per GPU,
    10 on GPUs; the 11th and 12th stay PENDING: the worker has GPUs and --cpu-offloading is off."""
    results = plan(cluster("2xRTX4090-24G"), req(M7, strategy="binpack"), 12, linear_estimator)
    stages = [placed(r).stage for r in results[:10]]
    assert stages == ["single-gpu"] * 10
    assert all(isinstance(r, Unplaceable) for r in results[10:])
    per_gpu = [sum(placed(r).vram_claim.get(i, 0) for r in results[:10]) for i in (0, 1)]
    assert per_gpu == [5 * int(4.5 * GiB)] * 2


def test_same_input_same_output() -> None:
    a = plan(cluster("two-workers-a100"), req(M7), 6, linear_estimator)
    b = plan(cluster("two-workers-a100"), req(M7), 6, linear_estimator)
    assert a == b


def test_score_breakdown_is_kept() -> None:
    p = placed(place(cluster("8xH100-80G"), req(M7), linear_estimator))
    # spread: 100 × (1 − 4.5 / 640) = 99.297 (one worker, 8 × 80 GiB)
    assert p.score_breakdown == {"resources": 99.297, "replicas": 0.0, "locality": 0.0}
    assert p.score == 99.297


def test_real_estimator_places_a_real_model_on_one_gpu(tiny_gguf: Path) -> None:
    """The real estimation API end to end: the tiny GGUF fits one 80 GiB GPU whole."""
    from gpufleet.sources import read_local_metadata

    _, meta = read_local_metadata(str(tiny_gguf))
    p = placed(place(cluster("8xH100-80G"), req(meta)))
    assert p.stage == "single-gpu" and p.gpu_indexes == [0] and not p.offloaded
    assert 0 < p.vram_claim[0] < 80 * GiB


def test_vllm_too_large_for_every_tp_size_says_so() -> None:
    """600 GiB weights on 8 × 80 GiB: TP8 needs 600 / 8 + 2 = 77 GiB per GPU > 0.9 × 80 = 72."""
    r = place(cluster("8xH100-80G"), req(model(40, 15, heads=40), backend="vllm"), linear_estimator)
    assert isinstance(r, Unplaceable)
    assert ("does not fit on 8 GPUs either: each needs 77.0 GiB, 72.0 GiB usable per GPU at vLLM's memory "
            "utilization") in r.reasons["h100"]


def test_placers_sharing_a_ledger_see_each_others_claims() -> None:
    """Two configurations of one deployment placed in one batch: binpack fills GPU 0 of 2 × 24 GiB
    (5 × 4.5 = 22.5 ≤ 24) whichever placer takes the replica, then GPU 1."""
    ledger = Ledger(cluster("2xRTX4090-24G"))
    a = Placer(ledger, req(M7, strategy="binpack"), linear_estimator)
    b = Placer(ledger, req(M7, strategy="binpack"), linear_estimator)
    order = [a, b, a, b, b, a, a]
    gpus = [placed(p.place()).gpu_indexes for p in order]
    assert gpus == [[0]] * 5 + [[1]] * 2
    assert ledger.workers["rtx"].gpus[0].free == 24 * GiB - 5 * int(4.5 * GiB)


def test_distributed_part_on_unified_memory_must_fit_that_workers_ram() -> None:
    """40 × 1 GiB, --distributed over mac (144 GiB unified GPU, 16 GiB RAM) and a (24 GiB GPU, 64 GiB RAM):
    split 144:24 puts round(40 × 144/168) = 34 layers (34.5 GiB) on the mac GPU, which is RAM there:
    34.5 > 16, so no distributed candidate; both workers have GPUs, so no CPU either: PENDING."""
    snap = ClusterSnapshot.model_validate({"workers": [
        {"name": "a", "memory_total": 64 * GiB, "gpus": [{"index": 0, "memory_total": 24 * GiB}]},
        {"name": "mac", "memory_total": 16 * GiB,
         "gpus": [{"index": 0, "memory_total": 144 * GiB, "vendor": "apple", "unified_memory": True}]}]})
    r = place(snap, req(model(40, 1), distributed=True), linear_estimator)
    assert isinstance(r, Unplaceable) and "not on its CPU" in r.reasons["a"]


def test_extended_kv_cache_claims_its_ram_and_needs_gpu_workers() -> None:
    """--kv-cache-cpu-gib 8 with vLLM: the worker's RAM claim grows by 8 GiB (LMCache's CPU
    chunks); the Apple host (unified memory, no CUDA/ROCm) is refused with the matrix."""
    from gpufleet.core.estimation import estimate

    meta = ModelMetadata(format="safetensors", architecture="LlamaForCausalLM", file_size=2 * GiB,
                         tensor_bytes=2 * GiB, n_layers=16, n_heads=32, n_kv_heads=8, head_dim_k=64,
                         head_dim_v=64, context_length=4096, torch_dtype="bfloat16")
    plain = placed(place(cluster("8xH100-80G"), req(meta, backend="vllm"), estimate))
    with_cache = PlacementRequest(deployment="d", metadata=meta, backend="vllm", spec=PlacementSpec(),
                                  source="model-d", kv_cache_cpu_bytes=8 * GiB)
    cached = placed(place(cluster("8xH100-80G"), with_cache, estimate))
    assert cached.ram_claim - plain.ram_claim == 8 * GiB
    refused = place(cluster("apple-m2-ultra"), with_cache, estimate)
    assert isinstance(refused, Unplaceable)
    assert "extended KV cache (LMCache) does not run with vllm on cpu workers" in refused.message()
