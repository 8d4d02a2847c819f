"""Model shapes for estimation tests and benchmarks.

Two kinds:

- :data:`ACCURACY_SHAPES`: real GGUF files written by
  :func:`gpufleet.demo.tiny_model.write_tiny_llama_gguf` (dense, GQA, F32/F16/
  Q8_0/Q4_0, tied output, long context, tens to ~200 MB), each with the
  llama-server settings it is run with, for comparing the estimate with what
  llama.cpp allocates.
- :func:`synthetic_metadata`: ModelMetadata of a model that is never written
  (a 70B-class one for the speed benchmark), sizes worked out from the ggml
  block sizes the way the GGUF tensor table would give them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.core.metadata import ModelMetadata
from gpufleet.demo.tiny_model import TinyModelShape

MiB = 1 << 20


@dataclass(frozen=True)
class AccuracyCase:
    name: str
    shape: TinyModelShape
    params: tuple[str, ...]  # llama-server flags, as --backend-param values


ACCURACY_SHAPES: tuple[AccuracyCase, ...] = (
    # ~100 MB: dense (n_kv_heads = n_heads) F16 with a 32k vocabulary
    AccuracyCase("dense-f16", TinyModelShape(n_layers=6, hidden=512, n_heads=8, n_kv_heads=8, ffn=1408,
                                             context_length=4096, dtype="f16", n_vocab=32000), ("--ctx-size=2048",)),
    # ~115 MB: GQA 4:1, Q8_0, 4 sequences of 1024
    AccuracyCase("gqa-q8_0", TinyModelShape(n_layers=4, hidden=1024, n_heads=16, n_kv_heads=4, ffn=2816,
                                            context_length=8192, dtype="q8_0", n_vocab=32000),
                 ("--ctx-size=4096", "--parallel=4")),
    # ~60 MB: Q4_0 (repacked for AVX2), tied output, flash attention off
    AccuracyCase("q4_0-tied-nofa", TinyModelShape(n_layers=6, hidden=1024, n_heads=16, n_kv_heads=4, ffn=2816,
                                                  context_length=4096, dtype="q4_0", n_vocab=32000,
                                                  tied_output=True), ("--ctx-size=2048", "--flash-attn=off")),
    # ~180 MB F32, long context: 32k tokens of KV (256 MiB f16)
    AccuracyCase("long-ctx-f32", TinyModelShape(n_layers=4, hidden=512, n_heads=8, n_kv_heads=2, ffn=1536,
                                                context_length=32768, dtype="f32", n_vocab=32000),
                 ("--ctx-size=32768",)),
    # ~200 MB: wide F16 (head_dim 128), tied output, q8_0 KV cache, small micro-batch
    AccuracyCase("wide-f16-q8kv", TinyModelShape(n_layers=2, hidden=1536, n_heads=12, n_kv_heads=4, ffn=4096,
                                                 context_length=8192, dtype="f16", n_vocab=32000,
                                                 tied_output=True),
                 ("--ctx-size=8192", "--cache-type-k=q8_0", "--cache-type-v=q8_0", "--ubatch-size=256")),
    # ~3 MB each: KV stream layouts and padding (3 streams of 2048 // 3 = 682 -> 768 cells; one unified
    # stream of 3000 -> 3072 cells) and a micro-batch clamped by --batch-size
    AccuracyCase("small-3-streams", TinyModelShape(n_layers=4, hidden=256, n_heads=8, n_kv_heads=2, ffn=512,
                                                   context_length=4096, dtype="f16"),
                 ("--ctx-size=2048", "--parallel=3")),
    AccuracyCase("small-unified", TinyModelShape(n_layers=4, hidden=256, n_heads=8, n_kv_heads=2, ffn=512,
                                                 context_length=4096, dtype="f16"),
                 ("--ctx-size=3000", "--parallel=2", "--kv-unified")),
    AccuracyCase("small-batch-128", TinyModelShape(n_layers=4, hidden=256, n_heads=4, n_kv_heads=4, ffn=1024,
                                                   context_length=4096, dtype="f32"),
                 ("--ctx-size=4096", "--batch-size=128")),
)


def q4_k_m_bytes(n_elements: int) -> int:
    """Q4_K_M mixes Q4_K (144 B / 256) and Q6_K (210 B / 256) blocks; llama.cpp's
    recipe gives ~4.85 bits per weight overall, i.e. 155.2 bytes per 256."""
    return n_elements * 1552 // 2560


def synthetic_metadata(
    n_layers: int = 80, hidden: int = 8192, n_heads: int = 64, n_kv_heads: int = 8, head_dim: int = 128,
    ffn: int = 28672, vocab: int = 128256, context: int = 131072,
) -> ModelMetadata:
    """A Llama-3-70B-shaped model in Q4_K_M (defaults): ~40 GiB of weights.

    Per block: Q and O are hidden x hidden, K and V hidden x (kv_heads x head_dim),
    gate/up/down hidden x ffn: 8192^2 x 2 + 8192 x 1024 x 2 + 8192 x 28672 x 3 = 855,638,016
    weights, plus two F32 norms of 8192."""
    kv = n_kv_heads * head_dim
    per_block = hidden * hidden * 2 + hidden * kv * 2 + hidden * ffn * 3
    layer = q4_k_m_bytes(per_block) + 2 * hidden * 4
    embedding = q4_k_m_bytes(vocab * hidden)
    output = vocab * hidden * 210 // 256 + hidden * 4  # Q6_K output projection + F32 norm
    total = layer * n_layers + embedding + output
    return ModelMetadata(
        format="gguf", architecture="llama", file_size=total, tensor_bytes=total,
        weight_bytes_by_dtype={"Q4_K": total * 7 // 10, "Q6_K": total * 3 // 10},
        n_params=per_block * n_layers + 2 * vocab * hidden, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv_heads, head_dim_k=head_dim, head_dim_v=head_dim, embedding_length=hidden,
        feed_forward_length=ffn, context_length=context, vocab_size=vocab, quantization="Q4_K_M",
        layer_bytes=[layer] * n_layers, embedding_bytes=embedding, output_bytes=output,
    )
