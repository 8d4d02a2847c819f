"""llama.cpp memory per device (first cut; the estimation issue deepens it).

Terms in bytes: weights from the tensor table, split by layers in proportion to
the tensor split; KV cache = n_ctx x n_kv_heads x (head_dim_k + head_dim_v) x 2
(f16) per layer, where the layer lives; compute = n_ubatch x (n_vocab + 4 x n_embd)
x 4 on the device holding the output; fixed overheads per process and per GPU.
"""

from __future__ import annotations

from gpufleet.core.estimation.types import DeviceUsage, Estimate, EstimateOptions
from gpufleet.core.metadata import ModelMetadata

MiB = 1 << 20
DEFAULT_CONTEXT = 4096
DEFAULT_UBATCH = 512
HOST_OVERHEAD = 64 * MiB
GPU_OVERHEAD = 256 * MiB


def _layers_per_gpu(n_layers: int, split: tuple[float, ...]) -> list[int]:
    """llama.cpp assigns contiguous layer ranges by cumulative split fraction."""
    total = sum(split) or 1.0
    bounds, acc = [], 0.0
    for s in split:
        acc += s / total
        bounds.append(round(acc * n_layers))
    counts, prev = [], 0
    for b in bounds:
        counts.append(b - prev)
        prev = b
    return counts


def estimate_llama_cpp_split(meta: ModelMetadata, options: EstimateOptions) -> Estimate:
    n_ctx = min(DEFAULT_CONTEXT, meta.context_length) if meta.context_length > 0 else DEFAULT_CONTEXT
    n_layers = max(meta.n_layers, 1)
    per_layer_w = meta.layer_bytes or [meta.tensor_bytes // n_layers] * n_layers
    kv_per_layer = n_ctx * meta.n_kv_heads * (meta.head_dim_k + meta.head_dim_v) * 2
    compute = DEFAULT_UBATCH * (meta.vocab_size + 4 * meta.embedding_length) * 4
    rest = max(meta.tensor_bytes - sum(per_layer_w), 0)
    if not options.gpu_memory:
        host = DeviceUsage("cpu", layers=n_layers, weights=meta.tensor_bytes,
                           kv_cache=kv_per_layer * n_layers, compute=compute, overhead=HOST_OVERHEAD)
        return Estimate(known=True, backend=options.backend, context_size=n_ctx,
                        total_layers=n_layers, gpu_layers=0, host=host)
    gpu_layers = n_layers if options.gpu_layers is None else max(0, min(options.gpu_layers, n_layers))
    split = options.tensor_split or tuple(float(m) for m in options.gpu_memory)
    counts = _layers_per_gpu(gpu_layers, split)
    cpu_layers = n_layers - gpu_layers
    gpus, start = [], cpu_layers
    for i, count in enumerate(counts):
        w = sum(per_layer_w[start:start + count])
        last = i == len(counts) - 1 and gpu_layers == n_layers
        gpus.append(DeviceUsage(f"gpu:{i}", layers=count, weights=w + (rest if last else 0),
                                kv_cache=kv_per_layer * count, compute=compute if count else 0,
                                overhead=GPU_OVERHEAD))
        start += count
    host_w = sum(per_layer_w[:cpu_layers]) + (0 if gpu_layers == n_layers else rest)
    host = DeviceUsage("cpu", layers=cpu_layers, weights=host_w, kv_cache=kv_per_layer * cpu_layers,
                       compute=compute if cpu_layers else 0, overhead=HOST_OVERHEAD)
    return Estimate(known=True, backend=options.backend, context_size=n_ctx, total_layers=n_layers,
                    gpu_layers=gpu_layers, host=host, gpus=tuple(gpus),
                    claims=tuple(g.total for g in gpus))
