"""llama.cpp's KV cache, per layer, in bytes.

Source: ``llama-kv-cache.cpp`` / ``llama-kv-cache-iswa.cpp`` (llama.cpp, 2025-26):

- cells: ``n_ctx`` is first padded to a multiple of 256; the context is then
  split into one stream per sequence unless ``--kv-unified``, each stream
  holding ``pad256(n_ctx) // n_seq`` cells padded up to a multiple of 256
  (``llama-context.cpp:292-298``: ``n_ctx = 1000`` gives 1024 cells;
  ``--parallel 3`` at 2048 gives 3 x 768; 4097 at ``--parallel 2`` gives
  pad(4352 / 2) = 2304 per stream, not pad(2048)).
- a sliding-window layer keeps ``pad256(min(cells, n_swa x (n_seq if unified
  else 1) + n_ubatch))`` cells per stream, unless ``--swa-full``
  (``llama-kv-cache-iswa.cpp:73``: the padding comes after the minimum).
- bytes per layer = cells x (row(K type, n_kv_heads x head_dim_k) + row(V type,
  n_kv_heads x head_dim_v)), a row of n elements of a ggml type taking
  n / block_size x block_bytes (f16: 2 bytes/element; q8_0: 34 bytes per 32).
- MLA (``kv_lora_rank`` > 0, DeepSeek-V2/V3 style): one latent "head" per
  token: K = kv_lora_rank + rope_head_dim, V = kv_lora_rank wide.
"""

from __future__ import annotations

from gpufleet.core.gguf import GGML_TYPE_SIZES
from gpufleet.core.metadata import ModelMetadata

KV_PAD = 256  # llama.cpp pads KV cache sizes to 256 cells
_TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
             "iq4_nl": 20, "bf16": 30}


def pad(n: int, to: int = KV_PAD) -> int:
    return -(-n // to) * to


def row_bytes(type_name: str, n: int) -> int:
    """Bytes of one row of ``n`` elements of a ggml type (blocks rounded up)."""
    block, size = GGML_TYPE_SIZES[_TYPE_IDS[type_name]]
    return -(-n // block) * size


def stream_cells(n_ctx: int, n_seq: int, unified: bool) -> tuple[int, int]:
    """(streams, cells per stream) for full-attention layers."""
    total = pad(max(n_ctx, 1))
    if unified:
        return 1, total
    return n_seq, pad(max(total // n_seq, 1))


def swa_stream_cells(cells: int, n_swa: int, n_seq: int, unified: bool, n_ubatch: int, full: bool) -> int:
    """Cells per stream of the sliding-window layers (the whole stream with ``--swa-full``)."""
    if full:
        return cells
    return pad(min(cells, n_swa * (n_seq if unified else 1) + n_ubatch))


#: Encoder-only architectures: llama.cpp creates no KV cache for them (each
#: batch is attended in full inside the compute graph).
ENCODER_ONLY = ("bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert",
                "modern-bert", "t5encoder")


def layer_widths(meta: ModelMetadata) -> list[tuple[int, int]]:
    """(K elements, V elements) per token for each layer; 0 for layers without
    attention (recurrent blocks of hybrid models) and for encoder-only models."""
    if meta.architecture in ENCODER_ONLY:
        return [(0, 0)] * meta.n_layers
    if meta.kv_lora_rank > 0:
        w = (meta.kv_lora_rank + meta.rope_head_dim, meta.kv_lora_rank)
        return [w] * meta.n_layers
    heads = meta.n_kv_heads_per_layer or [meta.n_kv_heads] * meta.n_layers
    return [(h * meta.head_dim_k, h * meta.head_dim_v) for h in heads]


def kv_bytes_per_layer(
    meta: ModelMetadata, cells_total: int, swa_cells_total: int, cache_k: str, cache_v: str
) -> list[int]:
    """KV bytes of every layer, given the total cells of full and sliding layers."""
    swa = meta.swa_layers
    out = []
    for il, (wk, wv) in enumerate(layer_widths(meta)):
        cells = swa_cells_total if il < len(swa) and swa[il] else cells_total
        out.append(cells * (row_bytes(cache_k, wk) + row_bytes(cache_v, wv)) if wk or wv else 0)
    return out
