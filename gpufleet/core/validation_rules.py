"""Which engine × model × placement combinations gpufleet refuses, and why (pure).

One place for the rules a deploy is checked against before anything is
recorded, each with a message that says what to do instead:

- CPU offloading, spanning workers and the extended KV cache are capabilities
  of an engine (:mod:`gpufleet.core.backends.registry`):
  :func:`capability_problems`. ``DeploymentConfig`` enforces the same rules
  when it is built; this function takes plain values (and imports no schema at
  run time) so the schema can call it too.
- the model's format must be one the engine reads (a GGUF file on vLLM, a
  safetensors checkpoint on llama.cpp), the same rule the backend choice
  applies (:func:`gpufleet.core.backends.choose.choose_backend`), and its
  category one the engine serves.
- vLLM's tensor-parallel size (``--tensor-parallel-size`` or
  ``--gpus-per-replica``) must divide the model's attention heads
  (:func:`gpufleet.core.backends.vllm.tensor_parallel_ok`).

The extended KV cache also depends on the *worker*: LMCache needs CUDA or ROCm
GPUs. That is decided per worker during placement, through
:func:`kv_cache_device_ok`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpufleet.core.backends import kv_cache
from gpufleet.core.backends.choose import NoBackend, choose_backend
from gpufleet.core.backends.params import BackendParamError, find_value, parse_param
from gpufleet.core.backends.registry import engine, with_capability
from gpufleet.core.metadata import ModelMetadata

if TYPE_CHECKING:
    from gpufleet.core.schemas import DeploymentConfig

#: Why the pinned vLLM is not offered GGUF files (appended to the format message).
VLLM_GGUF_NOTE = ("vLLM's GGUF loader is experimental (one file, the tokenizer taken from the original "
                  "repository, few architectures), so gpufleet runs vLLM on safetensors checkpoints only; "
                  "deploy the model's safetensors checkpoint with vLLM, or this GGUF file with llama.cpp")


class InvalidCombination(ValueError):
    """One or more engine combinations are refused; ``problems`` holds one message each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def capability_problems(backend: str, *, cpu_offloading: bool, distributed: bool, kv_cache_on: bool) -> list[str]:
    """The placement features ``backend`` lacks, one message each (the schema's messages)."""
    caps = engine(backend)
    problems = []
    if cpu_offloading and not caps.cpu_offloading:
        problems.append(f"--cpu-offloading is for {' and '.join(with_capability('cpu_offloading'))}; "
                        f"{backend} runs on GPUs only")
    if distributed and not caps.distributed:
        problems.append(f"--distributed is supported for {' and '.join(with_capability('distributed'))} "
                        f"(llama.cpp RPC servers), not {backend}")
    if kv_cache_on and not caps.kv_cache_extension:
        problems.append(f"the extended KV cache (--kv-cache-cpu-gib) is for "
                        f"{', '.join(with_capability('kv_cache_extension'))} on CUDA or ROCm workers, not {backend}; "
                        f"see docs/engines.md for the compatibility matrix")
    return problems


def model_problems(backend: str, metadata: ModelMetadata, category: str | None = None) -> list[str]:
    """The model's format and category against what ``backend`` serves."""
    problems = []
    try:
        choose_backend(metadata.format, metadata.category, backend)
    except NoBackend as exc:
        message = str(exc)
        if backend == "vllm" and metadata.format == "gguf":
            message += f" ({VLLM_GGUF_NOTE})"
        problems.append(message)
    caps = engine(backend)
    served = category or metadata.category
    if served not in caps.categories:
        problems.append(f"{backend} serves {', '.join(caps.categories)} models, not {served}")
    return problems


def vllm_tensor_parallel(config: DeploymentConfig) -> list[int]:
    """The tensor-parallel sizes the deployment asks vLLM for: ``--tensor-parallel-size``/``-tp``
    and ``--gpus-per-replica`` (divided by ``--pipeline-parallel-size``), each once."""
    params = []
    for raw in config.backend_params:
        try:
            params.append(parse_param(raw))
        except BackendParamError:
            continue  # malformed parameters have their own check and message
    sizes: list[int] = []
    tp, pp = find_value(params, "--tensor-parallel-size", "-tp"), find_value(params, "--pipeline-parallel-size", "-pp")
    if tp and tp.isdigit():
        sizes.append(int(tp))
    k = config.placement.gpus_per_replica
    stages = int(pp) if pp and pp.isdigit() and int(pp) > 0 else 1
    if k and k % stages == 0 and k // stages not in sizes:
        sizes.append(k // stages)
    return sizes


def tensor_parallel_problems(config: DeploymentConfig, metadata: ModelMetadata | None) -> list[str]:
    """vLLM: each asked tensor-parallel size must split the model's heads; a TP and a GPU count must agree."""
    from gpufleet.core.backends.vllm import tensor_parallel_ok  # vllm imports the schemas, which may import us

    if config.backend != "vllm":
        return []
    problems = []
    sizes = vllm_tensor_parallel(config)
    for tp in sizes:
        why = tensor_parallel_ok(metadata, tp)
        if why:
            problems.append(why)
    if len(sizes) > 1:
        problems.append(f"--tensor-parallel-size {sizes[0]} disagrees with --gpus-per-replica "
                        f"{config.placement.gpus_per_replica}; vLLM's tensor-parallel size is the number of GPUs "
                        f"per replica (divided by --pipeline-parallel-size), so give only --gpus-per-replica")
    return problems


def check_engine_combination(config: DeploymentConfig, metadata: ModelMetadata | None) -> None:
    """Raise :class:`InvalidCombination` (a ``ValueError``) with one message per refused combination."""
    problems = capability_problems(config.backend, cpu_offloading=config.placement.cpu_offloading,
                                   distributed=config.placement.distributed, kv_cache_on=config.kv_cache is not None)
    if metadata is not None:
        problems += model_problems(config.backend, metadata, config.category)
    problems += tensor_parallel_problems(config, metadata)
    if problems:
        raise InvalidCombination(problems)


def kv_cache_device_ok(device_kind: str, backend: str = "vllm") -> str | None:
    """For the placement filter: why a worker of ``device_kind`` ("cuda", "rocm", "cpu"; a worker whose
    GPUs are virtual counts as "cpu") cannot run ``backend`` with the extended KV cache; None when it can."""
    why = kv_cache.unsupported_reason(backend, device_kind)
    if why is None:
        return None
    return f"the extended KV cache (LMCache) does not run with {backend} on {device_kind} workers: {why}"
