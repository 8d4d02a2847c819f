"""vLLM memory per GPU, from safetensors headers and ``config.json``.

How vLLM (v1 engine, ``gpu_worker.determine_available_memory``) sizes itself:
it takes ``gpu_memory_utilization x total GPU memory`` (default 0.9) per GPU,
subtracts what a profiling run used (weights + peak activations + non-torch
memory such as NCCL and cuBLAS workspaces), and fills the rest with KV-cache
blocks. So placement must reserve the whole fraction on every GPU (the
*claim*), while the model *needs* only weights + activations + non-torch + the
KV cache of one ``--max-model-len`` request (vLLM refuses to start otherwise).

Terms per GPU, in bytes:

- weights: exact bytes of the checkpoint (``tensor_bytes``, from the safetensors
  headers, already quantized for GPTQ/AWQ/FP8 checkpoints) divided over
  ``tensor_parallel x pipeline_parallel`` GPUs.
- KV per token: ``layers/pp x 2 x max(1, n_kv_heads/tp) x head_dim x dtype bytes``
  (KV heads are replicated when fewer than the TP size); MLA:
  ``layers/pp x (kv_lora_rank + rope_head_dim) x dtype bytes``, not split by TP.
  dtype: ``--kv-cache-dtype`` (auto = the model's dtype; fp8 = 1 byte).
- activation peak: a constant per architecture family, in GiB, from the
  llm-d capacity planner (llm-d/llm-d-benchmark, ``config_explorer``
  ``capacity_planner.py``, fitted to its ``empirical-vllm-memory-results.md``:
  vLLM on H100, max_model_len 16000, default batching): dense 5.5, MoE 8.0,
  multimodal 2.5; validated profiles LlamaForCausalLM 4.8 (Llama-8B 4.76,
  Llama-70B TP2 4.84), Qwen2/Qwen3ForCausalLM 5.6 (Qwen3-0.6B 5.56). vLLM's
  profiling run uses ``max_num_batched_tokens``, not ``--max-model-len``, so
  the constant does not grow with the context.
- non-torch: 0.15 GiB at TP 1, 0.6 GiB at TP >= 2 (same source).
- CUDA graphs (-0.9..+1.0 GiB in those measurements) are captured after the
  KV cache is sized and are not counted; ``--enforce-eager`` does not change it.

Embedding and reranker models are given their need as the claim: they serve
short inputs and gpufleet launches them with a utilization that fits the need.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from gpufleet.core.backends.params import BackendParamError, parse_param
from gpufleet.core.estimation.types import DeviceUsage, Estimate, EstimateOptions
from gpufleet.core.metadata import ModelMetadata

GiB = 1 << 30
DEFAULT_UTILIZATION = 0.9
ACTIVATION_GIB = {"dense": 5.5, "moe": 8.0, "multimodal": 2.5}
ACTIVATION_BY_FAMILY_GIB = {"llama": 4.8, "qwen2": 5.6, "qwen3": 5.6}
NON_TORCH_GIB = (0.15, 0.6)  # TP 1, TP >= 2
HOST_RAM = 2 * GiB  # assumption: the vLLM process (torch + CUDA runtime); not measured here
#: --max-model-len when neither the user nor config.json gives a context length
DEFAULT_MAX_MODEL_LEN = 4096
DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2,
               "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1, "int8": 1}
CLAIMLESS = ("embedding", "reranker")


class VllmParamError(ValueError):
    """A vLLM argument the estimate needs is malformed; the message says how to fix it."""


@dataclass(frozen=True)
class VllmConfig:
    max_model_len: int | None = None
    utilization: float = DEFAULT_UTILIZATION
    tp: int | None = None  # None: one per placed GPU (placement decides tensor parallelism)
    pp: int = 1
    kv_cache_dtype: str = "auto"
    kv_cache_memory: int | None = None


def _number(flag: str, value: str | None, kind: type) -> float:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise VllmParamError(f"{flag} needs a number, got {value!r}") from None
    if number <= 0:
        raise VllmParamError(f"{flag} must be positive, got {value!r}")
    return number


@lru_cache(maxsize=512)
def parse_vllm_params(params: tuple[str, ...]) -> VllmConfig:
    fields: dict[str, object] = {}
    for raw in params:
        try:
            p = parse_param(raw)
        except BackendParamError as exc:
            raise VllmParamError(str(exc)) from exc
        if p.flag == "--max-model-len":
            fields["max_model_len"] = int(_number(p.flag, p.value, int))
        elif p.flag == "--gpu-memory-utilization":
            util = _number(p.flag, p.value, float)
            if util > 1:
                raise VllmParamError(f"--gpu-memory-utilization is a fraction in (0, 1], got {p.value!r}")
            fields["utilization"] = util
        elif p.flag in ("--tensor-parallel-size", "-tp"):
            fields["tp"] = int(_number(p.flag, p.value, int))
        elif p.flag in ("--pipeline-parallel-size", "-pp"):
            fields["pp"] = int(_number(p.flag, p.value, int))
        elif p.flag == "--kv-cache-dtype":
            fields["kv_cache_dtype"] = (p.value or "auto").lower()
        elif p.flag == "--kv-cache-memory-bytes":
            fields["kv_cache_memory"] = int(_number(p.flag, p.value, int))
    return VllmConfig(**fields)  # type: ignore[arg-type]


def activation_bytes(meta: ModelMetadata) -> int:
    if meta.mmproj_bytes or meta.category == "image":
        gib = ACTIVATION_GIB["multimodal"]
    elif meta.n_experts:
        gib = ACTIVATION_GIB["moe"]
    else:
        family = meta.architecture.lower().removesuffix("forcausallm")
        gib = ACTIVATION_BY_FAMILY_GIB.get(family, ACTIVATION_GIB["dense"])
    return int(gib * GiB)


def kv_dtype_bytes(meta: ModelMetadata, cfg: VllmConfig) -> int:
    name = meta.kv_cache_dtype if cfg.kv_cache_dtype == "auto" and meta.kv_cache_dtype else cfg.kv_cache_dtype
    if name == "auto":
        name = (meta.torch_dtype or "bfloat16").lower()
    if name not in DTYPE_BYTES:
        raise VllmParamError(f"--kv-cache-dtype {name!r} is not one of auto, {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def kv_bytes_per_token(meta: ModelMetadata, cfg: VllmConfig) -> int:
    """KV bytes per token on one GPU (see module docstring)."""
    layers = -(-meta.n_layers // cfg.pp)
    size = kv_dtype_bytes(meta, cfg)
    if meta.kv_lora_rank:
        return layers * (meta.kv_lora_rank + meta.rope_head_dim) * size
    heads = max(1, -(-meta.n_kv_heads // (cfg.tp or 1)))
    return layers * heads * (meta.head_dim_k + meta.head_dim_v) * size


def context_length(meta: ModelMetadata, cfg: VllmConfig) -> int:
    """The ``--max-model-len`` the KV cache is sized for: the user's, else the model's context,
    else :data:`DEFAULT_MAX_MODEL_LEN`. The vLLM launch passes the same value, so vLLM checks
    what the estimate assumed."""
    return cfg.max_model_len or meta.context_length or DEFAULT_MAX_MODEL_LEN


def with_tensor_parallel(cfg: VllmConfig, n_gpus: int) -> VllmConfig:
    """The user's ``--tensor-parallel-size``, else one rank per GPU placed on (over the
    pipeline stages): gpufleet's vLLM launch passes ``--tensor-parallel-size`` = the
    number of GPUs it was placed on, so the estimate must assume the same."""
    if cfg.tp is not None:
        return cfg
    tp = n_gpus // cfg.pp if n_gpus and n_gpus % cfg.pp == 0 else 1
    return replace(cfg, tp=max(1, tp))


def estimate_vllm(meta: ModelMetadata, options: EstimateOptions) -> Estimate:
    backend = options.backend
    try:
        cfg = with_tensor_parallel(parse_vllm_params(tuple(options.backend_params)), len(options.gpu_memory))
        per_token = kv_bytes_per_token(meta, cfg)
    except VllmParamError as exc:
        return Estimate.unknown(backend, f"invalid backend parameter: {exc}")
    assert cfg.tp is not None
    if meta.n_layers <= 0 or not (meta.n_kv_heads or meta.kv_lora_rank) or not meta.tensor_bytes:
        return Estimate.unknown(backend, f"{meta.architecture}: config.json lacks layers, KV heads or weights")
    world = cfg.tp * cfg.pp
    if options.gpu_memory and len(options.gpu_memory) != world:
        return Estimate.unknown(backend, f"vLLM runs on tensor_parallel x pipeline_parallel = {world} GPUs, "
                                         f"{len(options.gpu_memory)} given; set --tensor-parallel-size")
    max_len = context_length(meta, cfg)
    fixed = meta.tensor_bytes // world + activation_bytes(meta) + int(NON_TORCH_GIB[cfg.tp > 1] * GiB)
    one_request = max_len * per_token
    gpus, claims, available = [], [], []
    for i in range(world):
        need = DeviceUsage(f"gpu:{i}", layers=-(-meta.n_layers // cfg.pp), weights=meta.tensor_bytes // world,
                           kv_cache=cfg.kv_cache_memory or one_request,
                           compute=activation_bytes(meta), overhead=int(NON_TORCH_GIB[cfg.tp > 1] * GiB))
        gpus.append(need)
        card = options.gpu_memory[i] if options.gpu_memory else 0
        claim = need.total if meta.category in CLAIMLESS or not card else int(cfg.utilization * card)
        claims.append(max(claim, need.total))
        available.append(cfg.kv_cache_memory or (int(cfg.utilization * card) - fixed if card else one_request))
    notes = (f"vLLM claims {cfg.utilization:g} x each GPU's memory; KV for {max_len} tokens is the minimum",)
    if options.kv_cache_cpu_bytes:
        notes += (f"extended KV cache (LMCache): {options.kv_cache_cpu_bytes / GiB:g} GiB of host RAM",)
    # the extended KV cache (LMCache) keeps evicted KV blocks in host RAM: placement claims it there
    host = DeviceUsage("cpu", kv_cache=options.kv_cache_cpu_bytes, overhead=HOST_RAM)
    return Estimate(known=True, backend=backend, notes=notes, context_size=max_len, total_layers=meta.n_layers,
                    gpu_layers=meta.n_layers, host=host, gpus=tuple(gpus),
                    claims=tuple(claims), kv_cache_available=tuple(available))
