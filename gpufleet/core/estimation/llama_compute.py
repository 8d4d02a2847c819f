"""llama.cpp's compute buffers: the graph intermediates of one micro-batch.

ggml's graph allocator reuses memory, so a compute buffer is the peak of what
is alive at once, not the sum of all intermediates. That peak is either in
attention or in the feed-forward block of the widest layer, plus the graph
inputs that live through the whole graph. Per token of the micro-batch
(``n_ubatch``, clamped to ``n_batch`` and to the context), in f32 floats:

- attention: ``4 x n_embd + 3 x n_head x head_dim_k`` (residual, norm, Q, K, V,
  RoPE copies, attention output); without flash attention also the score
  matrix ``n_head x n_kv``.
- feed-forward: ``3 x n_ff + 5 x n_embd`` (gate, up, their product, and the
  residual stream); MoE: ``3 x n_ff_expert x (n_expert_used + n_shared) +
  n_expert`` (expert outputs and router logits).
- inputs: the KQ mask, ``n_kv x n_ubatch`` cells (f16 with flash attention,
  f32 without; ``build_attn_inp_kq_mask``, ``llama-graph.cpp``), positions and
  token ids (16 bytes per token). A sliding-window model has a second mask
  over its window's cells (``build_attn_inp_kv_iswa``, ``llama-graph.cpp:3519``).
- logits of the outputs the reserve graph computes: ``n_vocab x n_seq`` f32
  (current llama.cpp reserves one output per sequence, ``n_outputs_max_per_seq = 1``).

The coefficients were fitted to llama.cpp's own "CPU compute buffer size" log
line for about 40 shape and flag combinations on xllamacpp 2026.10 (n_embd
256-2048, n_ff 512-8192, ctx 256-8192, ubatch 128-512, flash on/off, 1-4
sequences) and are checked by ``tests/integration/test_estimate_accuracy.py`` (e.g.
n_embd 256, n_ff 512, ctx 2048, flash on: log 7.52 MiB, formula
512 x 4 x (3 x 512 + 5 x 256) + 2048 x 512 x 2 = 7.50 MiB). On CUDA llama.cpp
keeps the graph inputs in a pinned host buffer ("CUDA_Host compute buffer":
mask + input embeddings); :func:`input_bytes` is that part.
"""

from __future__ import annotations

from gpufleet.core.metadata import ModelMetadata

F32 = 4
INPUT_BYTES_PER_TOKEN = 16  # positions, token ids, output ids


def ffn_width(meta: ModelMetadata) -> int:
    """Floats per token alive at the feed-forward peak (see module docstring)."""
    e = meta.embedding_length
    if meta.n_experts and meta.expert_feed_forward_length:
        used = max(meta.n_experts_used, 1) + meta.n_shared_experts
        return 3 * meta.expert_feed_forward_length * used + meta.n_experts + 5 * e
    ff = meta.feed_forward_length or 4 * e
    return 3 * ff + 5 * e


def attention_width(meta: ModelMetadata, n_kv: int, flash: bool) -> int:
    q = meta.n_heads * (meta.head_dim_k or meta.embedding_length // max(meta.n_heads, 1))
    width = 4 * meta.embedding_length + 3 * q
    return width if flash else width + meta.n_heads * n_kv


def mask_bytes(n_kv: int, n_ubatch: int, flash: bool) -> int:
    return n_kv * n_ubatch * (2 if flash else 4)


def graph_bytes(meta: ModelMetadata, n_ubatch: int, n_kv: int, flash: bool, n_seq: int, logits: bool,
                n_kv_swa: int = 0) -> int:
    """Compute buffer of a device that runs layers (and the output layer if ``logits``);
    ``n_kv_swa`` > 0: the sliding-window layers' cells (their own mask)."""
    peak = max(attention_width(meta, n_kv, flash), ffn_width(meta))
    out = meta.vocab_size * n_seq * F32 if logits else 0
    masks = mask_bytes(n_kv, n_ubatch, flash) + (mask_bytes(n_kv_swa, n_ubatch, flash) if n_kv_swa else 0)
    return n_ubatch * (peak * F32 + INPUT_BYTES_PER_TOKEN) + masks + out


def input_bytes(meta: ModelMetadata, n_ubatch: int, n_kv: int, flash: bool, n_kv_swa: int = 0) -> int:
    """Host-side compute buffer when every layer is on a GPU: graph inputs only."""
    masks = mask_bytes(n_kv, n_ubatch, flash) + (mask_bytes(n_kv_swa, n_ubatch, flash) if n_kv_swa else 0)
    return n_ubatch * (meta.embedding_length * F32 + INPUT_BYTES_PER_TOKEN) + masks
