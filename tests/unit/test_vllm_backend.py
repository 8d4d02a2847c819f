"""vLLM launch descriptions: golden argv/env per placement, with the arithmetic beside each case.

Model used throughout (Llama-3.1-8B's shape): 32 attention heads, 8 KV heads,
32 layers, 14.99 GiB of bf16 weights, 131072-token context.
"""

from __future__ import annotations

import json

import pytest

from gpufleet.core.backends import vllm
from gpufleet.core.backends.launch import LaunchDescription
from gpufleet.core.backends.params import BackendParamError
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.placement_spec import PlacementPart
from gpufleet.core.schemas import DeploymentConfig, KvCacheSpec, ModelSource, Placement

GiB = 1 << 30
CARD80 = 80 * GiB
CARD48 = 48 * GiB
CLAIM80 = int(0.9 * CARD80)  # 77309411328 bytes = 72 GiB: the estimate's 0.9 x card
CLAIM48 = int(0.9 * CARD48)  # 46385646796 bytes (0.9 x 48 GiB, truncated)


def llama(**kw: object) -> ModelMetadata:
    fields: dict[str, object] = dict(
        format="safetensors", architecture="LlamaForCausalLM", file_size=int(14.99 * GiB),
        tensor_bytes=int(14.99 * GiB), n_layers=32, n_heads=32, n_kv_heads=8, head_dim_k=128, head_dim_v=128,
        context_length=131072, torch_dtype="bfloat16")
    fields.update(kw)
    return ModelMetadata(**fields)  # type: ignore[arg-type]


LLAMA = llama()


def config(params: list[str] | None = None, **kw: object) -> DeploymentConfig:
    kw.setdefault("env", {"A": "1"})
    return DeploymentConfig(source=ModelSource(local_path="/m/llama"), backend="vllm",
                            backend_params=params or [], **kw)  # type: ignore[arg-type]


def placed(gpus: list[int], claim: int = CLAIM80, **kw: object) -> Placement:
    return Placement(worker="a", gpu_indexes=gpus, vram_claim={i: claim for i in gpus}, exclusive=True,
                     **kw)  # type: ignore[arg-type]


def launch(cfg: DeploymentConfig, placement: Placement, *, card: int = CARD80, meta: ModelMetadata | None = LLAMA,
           **kw: object) -> LaunchDescription:
    memory = {i: card for i in placement.gpu_indexes}
    return vllm.build_launch(cfg, metadata=meta, placement=placement, model_path="/m/llama", served_name="chat",
                             host="127.0.0.1", port=40000, gpu_memory=memory, **kw)  # type: ignore[arg-type]


HEAD = ["--model", "/m/llama", "--host", "127.0.0.1", "--port", "40000", "--served-model-name", "chat"]


# --- golden launches ------------------------------------------------------------------------

@pytest.mark.parametrize(("gpus", "card", "claim", "expected_args", "visible", "shm"), [
    # one GPU: claim 72 GiB of 80 GiB -> ceil(1000 x 72/80) / 1000 = 0.9; context = the model's 131072
    ([3], CARD80, CLAIM80,
     [*HEAD, "--tensor-parallel-size", "1", "--gpu-memory-utilization", "0.9", "--max-model-len", "131072"],
     "3", None),
    # tensor parallel over 2: 0.9 x 80 GiB on each -> 0.9; TP = 2 placed GPUs; /dev/shm for the workers
    ([0, 1], CARD80, CLAIM80,
     [*HEAD, "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9", "--max-model-len", "131072"],
     "0,1", 16 * GiB),
    # tensor parallel over 4 cards of 48 GiB: claim int(0.9 x 48 GiB) = 46385646796 bytes;
    # 1000 x 46385646796 / 51539607552 = 899.99999998 -> ceil 900 -> 0.9 (never below the claim)
    ([4, 5, 6, 7], CARD48, CLAIM48,
     [*HEAD, "--tensor-parallel-size", "4", "--gpu-memory-utilization", "0.9", "--max-model-len", "131072"],
     "4,5,6,7", 16 * GiB),
])
def test_golden_single_worker(gpus: list[int], card: int, claim: int, expected_args: list[str], visible: str,
                              shm: int | None) -> None:
    spec = launch(config(), placed(gpus, claim), card=card)
    assert spec.program == vllm.PROGRAM
    assert spec.program.kind == "python-module" and spec.program.name == "vllm.entrypoints.openai.api_server"
    assert spec.args == expected_args
    assert spec.env == {"A": "1", "CUDA_VISIBLE_DEVICES": visible}
    assert spec.gpu_indexes == tuple(gpus)
    assert spec.shm_size == shm
    assert (spec.engine, spec.version, spec.port) == ("vllm", "0.32.0", 40000)
    assert spec.health_paths == ("/health",)
    assert spec.readiness_timeout_s == 600.0
    assert spec.model_path == "/m/llama"


@pytest.mark.parametrize(("claims", "totals", "expected"), [
    ({0: 72 * GiB}, {0: CARD80}, "0.9"),            # 72/80 = 0.9 exactly
    ({0: 3 * GiB}, {0: CARD80}, "0.038"),           # 3/80 = 0.0375 -> 37.5 thousandths -> ceil 38
    ({0: CLAIM48}, {0: CARD48}, "0.9"),             # 899.99999998 thousandths -> ceil 900
    ({0: 40 * GiB}, {0: CARD48}, "0.834"),          # 40/48 = 0.83333 -> ceil 834 (takes 40.03 GiB, not 39.98)
    ({0: 72 * GiB, 1: 40 * GiB}, {0: CARD80, 1: CARD48}, "0.9"),  # max(0.9, 0.834): one fraction for all GPUs
    ({0: CARD80}, {0: CARD80}, "1"),                # the whole card
    ({0: 1}, {0: CARD80}, "0.001"),                 # never 0: vLLM refuses a zero fraction
])
def test_utilization_arithmetic(claims: dict[int, int], totals: dict[int, int], expected: str) -> None:
    value = vllm.utilization(claims, totals)
    assert value == expected
    # vLLM gets at least every claim, and at most total/1000 bytes more on the GPU that sets the max
    assert all(float(value) * totals[i] >= c - 1 for i, c in claims.items())


def test_utilization_needs_every_total() -> None:
    with pytest.raises(ValueError, match="no memory size for placed GPU 1"):
        vllm.utilization({0: GiB, 1: GiB}, {0: CARD80})


@pytest.mark.parametrize(("category", "arch", "claim", "util"), [
    # embeddings claim only their need: 3 GiB of 80 GiB -> 0.0375 -> 0.038
    ("embedding", "BertModel", 3 * GiB, "0.038"),
    # a cross-encoder reranker: 2 GiB of 80 GiB -> 0.025 exactly
    ("reranker", "XLMRobertaForSequenceClassification", 2 * GiB, "0.025"),
])
def test_pooling_models_run_the_pooling_runner(category: str, arch: str, claim: int, util: str) -> None:
    meta = llama(architecture=arch, category=category, context_length=512, n_heads=16, n_kv_heads=16)
    spec = launch(config(), placed([0], claim), meta=meta)
    assert spec.args == [*HEAD, "--tensor-parallel-size", "1", "--gpu-memory-utilization", util,
                         "--max-model-len", "512", "--runner", "pooling"]
    assert "--convert" not in spec.args  # vLLM's --convert auto keeps native poolers, converts the rest
    assert "/v1/rerank" in vllm.ROUTES["reranker"] and "/v1/score" in vllm.ROUTES["reranker"]


def test_category_override_from_config() -> None:
    spec = launch(config(category="embedding"), placed([0], 3 * GiB))
    assert spec.args[-2:] == ["--runner", "pooling"]


def test_unknown_metadata_leaves_context_to_vllm() -> None:
    spec = launch(config(), placed([0]), meta=None)
    assert "--max-model-len" not in spec.args
    assert spec.args[-2:] == ["--gpu-memory-utilization", "0.9"]


def test_context_without_config_length_is_the_estimates_default() -> None:
    # config.json without max_position_embeddings: the estimate sized KV for 4096 tokens, so does vLLM
    spec = launch(config(), placed([0]), meta=llama(context_length=0))
    assert spec.args[spec.args.index("--max-model-len") + 1] == "4096"


# --- across workers -------------------------------------------------------------------------

SPANNING = Placement(worker="a", gpu_indexes=[0, 1], vram_claim={0: CLAIM80, 1: CLAIM80}, stage="distributed",
                     parts=[PlacementPart(worker="b", gpu_indexes=[2, 3], vram_claim={2: CLAIM80, 3: CLAIM80})])


def test_golden_two_workers_head_and_headless() -> None:
    head, worker = vllm.build_multinode_launches(
        config(), metadata=LLAMA, placement=SPANNING, model_paths={"a": "/na/llama", "b": "/nb/llama"},
        served_name="chat", host="0.0.0.0", port=40000, master_addr="10.0.0.1",
        gpu_memory={"a": {0: CARD80, 1: CARD80}, "b": {2: CARD80, 3: CARD80}})
    # 2 GPUs per worker x 2 workers: each worker one pipeline stage of tensor parallel 2
    engine = ["--tensor-parallel-size", "2", "--pipeline-parallel-size", "2", "--gpu-memory-utilization", "0.9",
              "--max-model-len", "131072"]
    multi = ["--distributed-executor-backend", "mp", "--nnodes", "2"]
    assert head.args == ["--model", "/na/llama", "--host", "0.0.0.0", "--port", "40000",
                         "--served-model-name", "chat", *engine, *multi, "--node-rank", "0",
                         "--master-addr", "10.0.0.1", "--master-port", "29501"]
    assert worker.args == ["--model", "/nb/llama", "--served-model-name", "chat", *engine, *multi,
                           "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29501", "--headless"]
    assert head.env == {"A": "1", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert worker.env == {"A": "1", "CUDA_VISIBLE_DEVICES": "2,3"}
    assert (head.gpu_indexes, worker.gpu_indexes) == ((0, 1), (2, 3))
    assert (head.port, head.health_paths) == (40000, ("/health",))
    assert (worker.port, worker.health_paths) == (None, ())  # headless: no API; the head's /health covers it
    assert head.readiness_timeout_s == worker.readiness_timeout_s == 900.0


@pytest.mark.parametrize(("placement", "message"), [
    (Placement(worker="a", gpu_indexes=[0, 1], vram_claim={0: CLAIM80, 1: CLAIM80},
               parts=[PlacementPart(worker="b", gpu_indexes=[2], vram_claim={2: CLAIM80})]),
     "same number of GPUs on each worker"),
    (placed([0]), "for an instance placed on several workers"),
])
def test_multinode_refusals(placement: Placement, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vllm.build_multinode_launches(
            config(), metadata=LLAMA, placement=placement, model_paths={"a": "/m", "b": "/m"}, served_name="c",
            host="h", port=1, master_addr="10.0.0.1", gpu_memory={"a": {0: CARD80, 1: CARD80}, "b": {2: CARD80}})


def test_single_launch_refuses_a_spanning_placement_without_multinode() -> None:
    with pytest.raises(ValueError, match="spans 2 worker"):
        launch(config(), SPANNING)


# --- user parameters ------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "gpus", "tail"), [
    # the user's context wins: no managed --max-model-len
    (["--max-model-len=8192"], [0],
     ["--tensor-parallel-size", "1", "--gpu-memory-utilization", "0.9", "--max-model-len", "8192"]),
    # a TP equal to the placed count is accepted and not repeated
    (["--tensor-parallel-size=2"], [0, 1],
     ["--gpu-memory-utilization", "0.9", "--max-model-len", "131072", "--tensor-parallel-size", "2"]),
    # a utilization under the claim (0.5 < 0.9) is the user's to choose; ours is left out
    (["--gpu-memory-utilization=0.5", "--enforce-eager"], [0],
     ["--tensor-parallel-size", "1", "--max-model-len", "131072", "--gpu-memory-utilization", "0.5",
      "--enforce-eager"]),
    # two stages on one worker: 4 GPUs / pp 2 -> TP 2
    (["-pp=2"], [0, 1, 2, 3],
     ["--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9", "--max-model-len", "131072", "-pp", "2"]),
])
def test_user_params_win_where_they_should(params: list[str], gpus: list[int], tail: list[str]) -> None:
    spec = launch(config(params), placed(gpus))
    assert spec.args[:len(HEAD)] == HEAD
    assert spec.args[len(HEAD):] == tail


def test_user_runner_wins_over_the_category() -> None:
    meta = llama(architecture="Qwen3ForCausalLM", category="embedding")
    spec = launch(config(["--runner=pooling", "--convert=embed"]), placed([0], 3 * GiB), meta=meta)
    assert spec.args.count("--runner") == 1
    assert spec.args[-4:] == ["--runner", "pooling", "--convert", "embed"]


@pytest.mark.parametrize(("params", "gpus", "message"), [
    (["--port=9000"], [0], "--port is set by gpufleet"),
    (["--served-model-name=x"], [0], "deployment name"),
    (["--api-key=secret"], [0], "--api-key is set by gpufleet"),
    (["--model=/other"], [0], "--model is set by gpufleet"),
    (["-dp=2"], [0], "use --replicas"),
    (["--headless"], [0], "--headless is set by gpufleet"),
    (["--tensor-parallel-size=4"], [0, 1], "--tensor-parallel-size 4 differs from the placement"),
    (["--gpu-memory-utilization=0.95"], [0], r"more than placement claimed \(0.9"),
    (["--max-model-len=long"], [0], "needs a number"),
    (["-pp=3"], [0, 1], "does not fit the placement"),
])
def test_refused_params(params: list[str], gpus: list[int], message: str) -> None:
    with pytest.raises(BackendParamError, match=message):
        launch(config(params), placed(gpus))


def test_kv_transfer_config_is_managed_only_with_the_extended_cache() -> None:
    own = '--kv-transfer-config={"kv_connector":"NixlConnector","kv_role":"kv_both"}'
    assert vllm.validate_params([own])[0].flag == "--kv-transfer-config"
    with pytest.raises(BackendParamError, match="configures LMCache"):
        vllm.validate_params([own], kv_cache=True)


# --- tensor parallel vs the model's heads ---------------------------------------------------

@pytest.mark.parametrize(("heads", "kv_heads", "tp", "ok"), [
    (32, 8, 1, True),
    (32, 8, 4, True),    # 32/4 = 8 heads, 8/4 = 2 KV heads per GPU
    (32, 8, 16, True),   # 32/16 = 2 heads; 8 KV heads < 16: replicated, 16 is a multiple of 8
    (32, 8, 3, False),   # 32/3 is not whole
    (32, 8, 6, False),   # 32/6 is not whole
    (28, 4, 7, False),   # Qwen2.5-7B: 28/7 = 4 heads, but 7 is neither a divisor nor a multiple of 4 KV heads
    (28, 4, 4, True),    # 28/4 = 7 heads, 4/4 = 1 KV head
    (12, 2, 3, False),   # 12/3 = 4 heads; 3 vs 2 KV heads: 3 % 2 = 1
])
def test_tensor_parallel_ok(heads: int, kv_heads: int, tp: int, ok: bool) -> None:
    why = vllm.tensor_parallel_ok(llama(n_heads=heads, n_kv_heads=kv_heads), tp)
    assert (why is None) == ok, why


def test_tensor_parallel_refused_at_launch_with_the_divisors() -> None:
    meta = llama(n_heads=28, n_kv_heads=4)
    with pytest.raises(BackendParamError, match=r"3 does not divide 28; use a GPU count that does \(1, 2, 4, 7, 14"):
        launch(config(), placed([0, 1, 2]), meta=meta)


# --- extended KV cache (LMCache) ------------------------------------------------------------

def test_extended_kv_cache_env_and_transfer_config() -> None:
    cfg = config(kv_cache=KvCacheSpec(cpu_gib=32, remote_url="redis://cache:6379"))
    spec = launch(cfg, placed([0, 1]))
    flag = spec.args.index("--kv-transfer-config")
    assert json.loads(spec.args[flag + 1]) == {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    assert spec.args[flag + 1] == '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'
    # 32 GiB over 2 tensor-parallel ranks (one LMCache engine each) = 16 GiB per rank
    assert spec.env == {"A": "1", "CUDA_VISIBLE_DEVICES": "0,1", "LMCACHE_CHUNK_SIZE": "256",
                        "LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "16",
                        "LMCACHE_REMOTE_URL": "redis://cache:6379", "LMCACHE_REMOTE_SERDE": "naive"}


def test_extended_kv_cache_refused_on_the_cpu_build() -> None:
    cfg = config(kv_cache=KvCacheSpec(cpu_gib=4))
    with pytest.raises(ValueError, match="vllm on cpu workers.*vllm: cuda yes, rocm yes, cpu no"):
        launch(cfg, placed([0]), virtual_gpus=True)


# --- virtual GPUs: the CPU build ------------------------------------------------------------

QWEN = llama(architecture="Qwen3ForCausalLM", tensor_bytes=GiB, file_size=GiB, n_layers=28, n_heads=16,
             n_kv_heads=8, context_length=40960)
CARD16 = 16 * GiB


@pytest.mark.parametrize(("gpus", "claim", "space"), [
    # one rank: claim int(0.9 x 16 GiB) = 14.4 GiB; 14.4 - 1 weights - 5.6 Qwen3 activation - 0.15 = 7.65 -> 7
    ([0], int(0.9 * CARD16), "7"),
    # TP 2: per rank 14.4 - 0.5 weights - 5.6 - 0.6 non-torch (TP >= 2) = 7.7 -> 7
    ([0, 1], int(0.9 * CARD16), "7"),
    # a need-sized claim of 7 GiB: 7 - 1 - 5.6 - 0.15 = 0.25 -> floor 0 -> at least 1
    ([0], 7 * GiB, "1"),
])
def test_virtual_gpus_run_the_cpu_build(gpus: list[int], claim: int, space: str) -> None:
    spec = launch(config(), placed(gpus, claim), card=CARD16, meta=QWEN, virtual_gpus=True)
    assert spec.env == {"A": "1", "CUDA_VISIBLE_DEVICES": "", "VLLM_CPU_KVCACHE_SPACE": space}
    assert spec.gpu_indexes == ()  # declared GPUs: nothing for a container runtime to request
    assert spec.readiness_timeout_s == 300.0
    assert spec.args[spec.args.index("--tensor-parallel-size") + 1] == str(len(gpus))
    assert "--enforce-eager" not in spec.args


def test_cpu_build_needs_metadata() -> None:
    with pytest.raises(ValueError, match="VLLM_CPU_KVCACHE_SPACE"):
        launch(config(), placed([0]), meta=None, virtual_gpus=True)


def test_managed_env_wins_over_deployment_env() -> None:
    cfg = config(env={"CUDA_VISIBLE_DEVICES": "0,1,2,3", "HF_HOME": "/h"})
    spec = launch(cfg, placed([2]))
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "2", "HF_HOME": "/h"}
    assert list(spec.env) == ["CUDA_VISIBLE_DEVICES", "HF_HOME"]  # deployment's order, managed value


def test_missing_claim_or_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="claims no memory on GPU"):
        launch(config(), Placement(worker="a", gpu_indexes=[0, 1], vram_claim={0: CLAIM80}))
    with pytest.raises(ValueError, match="no memory size"):
        vllm.build_launch(config(), metadata=LLAMA, placement=placed([0, 1]), model_path="/m", served_name="c",
                          host="h", port=1, gpu_memory={0: CARD80})
    with pytest.raises(ValueError, match="vLLM runs on GPUs"):
        launch(config(), Placement(worker="a"))
