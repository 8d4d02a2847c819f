"""Memory estimate of one llama.cpp instance from model metadata.

Deliberately simple (the estimation issue deepens it); every term is stated in
bytes with where it comes from:

- weights  = Σ tensor bytes from the GGUF tensor table (exact, by ggml block sizes).
- KV cache = n_ctx × n_layers × n_kv_heads × (head_dim_k + head_dim_v) × 2 bytes
  (llama.cpp's default K/V cache type is f16; one unified cache shared by all slots).
- compute  = n_ubatch × (n_vocab + 4 × n_embd) × 4 bytes: the f32 logits of one
  micro-batch plus a few hidden-state sized intermediates (n_ubatch defaults to 512).
- overhead = a fixed allowance per process (host) and per GPU (CUDA context).

The context size defaults to min(4096, the model's training context): 4096 is
llama-server's default `--ctx-size`, and gpufleet passes the smaller value
explicitly so that the estimate and the process agree.
"""

from __future__ import annotations

from gpufleet.core.schemas import ModelMetadata, ResourceEstimate

MiB = 1 << 20
DEFAULT_CONTEXT = 4096  # llama-server's default --ctx-size
DEFAULT_UBATCH = 512  # llama.cpp's default --ubatch-size
KV_BYTES_F16 = 2
HOST_OVERHEAD = 64 * MiB  # process, HTTP server, tokenizer (llama-server idles at ~20-40 MiB RSS)
GPU_OVERHEAD = 256 * MiB  # CUDA context and allocator slack per GPU


def default_context_size(meta: ModelMetadata) -> int:
    return min(DEFAULT_CONTEXT, meta.context_length) if meta.context_length > 0 else DEFAULT_CONTEXT


def kv_cache_bytes(meta: ModelMetadata, n_ctx: int) -> int:
    per_token_per_layer = meta.n_kv_heads * (meta.head_dim_k + meta.head_dim_v) * KV_BYTES_F16
    return n_ctx * meta.n_layers * per_token_per_layer


def compute_buffer_bytes(meta: ModelMetadata, n_ubatch: int = DEFAULT_UBATCH) -> int:
    return n_ubatch * (meta.vocab_size + 4 * meta.embedding_length) * 4


def estimate_llama_cpp(meta: ModelMetadata, context_size: int | None = None) -> ResourceEstimate:
    """Estimate for one replica, either fully on one GPU or fully on CPU."""
    n_ctx = context_size or default_context_size(meta)
    weights = meta.tensor_bytes
    kv = kv_cache_bytes(meta, n_ctx)
    compute = compute_buffer_bytes(meta)
    model_bytes = weights + kv + compute
    return ResourceEstimate(
        gpu_vram=model_bytes + GPU_OVERHEAD,
        gpu_ram=HOST_OVERHEAD,
        cpu_ram=model_bytes + HOST_OVERHEAD,
        weights=weights,
        kv_cache=kv,
        compute=compute,
        context_size=n_ctx,
    )
