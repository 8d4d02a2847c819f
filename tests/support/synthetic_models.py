"""Synthetic model files for tests and benchmarks: real headers, virtual data.

GGUF headers are written byte by byte per the GGUF v3 spec (so the tests do not
depend on the writer of the parser under test); tensor data is left to
:class:`~tests.support.fake_hub.VirtualFile` zeros, so a 70B-class model costs
its header (a few MiB), not 40 GB.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from gpufleet.core.gguf import GGML_TYPE_SIZES
from gpufleet.core.safetensors import DTYPE_BITS

F32, F16, Q4_K, Q6_K, Q8_0 = 0, 1, 12, 14, 8
ALIGN = 32


def _str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, value: object) -> bytes:
    if isinstance(value, bool):
        return _str(key) + struct.pack("<IB", 7, value)
    if isinstance(value, int):
        return _str(key) + struct.pack("<II", 4, value)
    if isinstance(value, float):
        return _str(key) + struct.pack("<If", 6, value)
    if isinstance(value, str):
        return _str(key) + struct.pack("<I", 8) + _str(value)
    if isinstance(value, list) and value and isinstance(value[0], str):
        return _str(key) + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_str(v) for v in value)
    if isinstance(value, list):
        return _str(key) + struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)
    raise TypeError(type(value))


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    block, size = GGML_TYPE_SIZES[ggml_type]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


@dataclass(frozen=True)
class LlamaShape:
    n_layers: int = 2
    n_embd: int = 64
    n_heads: int = 4
    n_kv_heads: int = 4
    n_ff: int = 128
    context: int = 512
    n_vocab: int = 256
    n_merges: int = 0
    weight_type: int = F16
    file_type: int = 1  # MOSTLY_F16


# Llama-3-70B-like, Q4_K_M mix: 80 blocks x 9 tensors + 3 = 723 tensors, 128256-token vocabulary.
LLAMA_70B_Q4_K_M = LlamaShape(n_layers=80, n_embd=8192, n_heads=64, n_kv_heads=8, n_ff=28672,
                              context=131072, n_vocab=128256, n_merges=280147, weight_type=Q4_K, file_type=15)


def llama_tensors(s: LlamaShape) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, GGUF shape ne[0] first, ggml type). Q4_K_M keeps attn_v/ffn_down
    and the output in Q6_K, as llama.cpp's quantizer does."""
    hd = s.n_embd // s.n_heads
    kv = hd * s.n_kv_heads
    hi = Q6_K if s.weight_type == Q4_K else s.weight_type
    out = [("token_embd.weight", (s.n_embd, s.n_vocab), s.weight_type)]
    for i in range(s.n_layers):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (s.n_embd,), F32),
            (b + "attn_q.weight", (s.n_embd, s.n_embd), s.weight_type),
            (b + "attn_k.weight", (s.n_embd, kv), s.weight_type),
            (b + "attn_v.weight", (s.n_embd, kv), hi),
            (b + "attn_output.weight", (s.n_embd, s.n_embd), s.weight_type),
            (b + "ffn_norm.weight", (s.n_embd,), F32),
            (b + "ffn_gate.weight", (s.n_embd, s.n_ff), s.weight_type),
            (b + "ffn_up.weight", (s.n_embd, s.n_ff), s.weight_type),
            (b + "ffn_down.weight", (s.n_ff, s.n_embd), hi),
        ]
    out += [("output_norm.weight", (s.n_embd,), F32), ("output.weight", (s.n_embd, s.n_vocab), hi)]
    return out


def gguf_header(metadata: dict[str, object], tensors: list[tuple[str, tuple[int, ...], int]]) -> tuple[bytes, int]:
    """(header bytes padded to the alignment, bytes of tensor data that follow)."""
    parts = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    parts += [_kv(k, v) for k, v in metadata.items()]
    offset = 0
    for name, shape, gtype in tensors:
        parts.append(_str(name) + struct.pack(f"<I{len(shape)}Q", len(shape), *shape) + struct.pack("<IQ", gtype, offset))
        offset += -(-tensor_nbytes(shape, gtype) // ALIGN) * ALIGN
    head = b"".join(parts)
    head += bytes(-len(head) % ALIGN)
    return head, offset


def llama_metadata(s: LlamaShape, name: str = "synthetic") -> dict[str, object]:
    meta: dict[str, object] = {
        "general.architecture": "llama", "general.name": name, "general.file_type": s.file_type,
        "llama.context_length": s.context, "llama.embedding_length": s.n_embd, "llama.block_count": s.n_layers,
        "llama.feed_forward_length": s.n_ff, "llama.attention.head_count": s.n_heads,
        "llama.attention.head_count_kv": s.n_kv_heads, "llama.rope.dimension_count": s.n_embd // s.n_heads,
        "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": s.n_vocab,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [f"tok{i}" for i in range(s.n_vocab)],
        "tokenizer.ggml.token_type": [1] * s.n_vocab,
    }
    if s.n_merges:
        meta["tokenizer.ggml.merges"] = [f"t{i} k{i}" for i in range(s.n_merges)]
    return meta


def llama_gguf(s: LlamaShape, name: str = "synthetic") -> tuple[bytes, int]:
    """(header, total file size) of a single-file llama GGUF."""
    head, data = gguf_header(llama_metadata(s, name), llama_tensors(s))
    return head, len(head) + data


def llama_gguf_shards(s: LlamaShape, n_shards: int) -> list[tuple[bytes, int]]:
    """gguf-split layout: shard 1 has the model's metadata, every shard has
    split.no/split.count/split.tensors.count and its own slice of the tensor table."""
    tensors = llama_tensors(s)
    per = -(-len(tensors) // n_shards)
    shards = []
    for i in range(n_shards):
        meta: dict[str, object] = llama_metadata(s) if i == 0 else {}
        meta.update({"split.no": i, "split.count": n_shards, "split.tensors.count": len(tensors)})
        head, data = gguf_header(meta, tensors[i * per:(i + 1) * per])
        shards.append((head, len(head) + data))
    return shards


def safetensors_header(tensors: list[tuple[str, str, tuple[int, ...]]]) -> tuple[bytes, int]:
    """(header bytes, total file size) with contiguous data offsets."""
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        nbytes = -(-n * DTYPE_BITS[dtype] // 8)
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)
    head = struct.pack("<Q", len(text)) + text
    return head, len(head) + offset


def llama_hf_tensors(layers: int, hidden: int, heads: int, kv_heads: int, ff: int, vocab: int,
                     dtype: str = "BF16") -> list[tuple[str, str, tuple[int, ...]]]:
    """transformers names and (out, in) shapes of a Llama checkpoint."""
    kv = hidden // heads * kv_heads
    out = [("model.embed_tokens.weight", dtype, (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", dtype, (hidden,)),
            (p + "self_attn.q_proj.weight", dtype, (hidden, hidden)),
            (p + "self_attn.k_proj.weight", dtype, (kv, hidden)),
            (p + "self_attn.v_proj.weight", dtype, (kv, hidden)),
            (p + "self_attn.o_proj.weight", dtype, (hidden, hidden)),
            (p + "post_attention_layernorm.weight", dtype, (hidden,)),
            (p + "mlp.gate_proj.weight", dtype, (ff, hidden)),
            (p + "mlp.up_proj.weight", dtype, (ff, hidden)),
            (p + "mlp.down_proj.weight", dtype, (hidden, ff)),
        ]
    out += [("model.norm.weight", dtype, (hidden,)), ("lm_head.weight", dtype, (vocab, hidden))]
    return out


def llama_config(layers: int, hidden: int, heads: int, kv_heads: int, ff: int, vocab: int, ctx: int = 8192) -> bytes:
    return json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "num_hidden_layers": layers,
        "intermediate_size": ff, "max_position_embeddings": ctx, "vocab_size": vocab, "torch_dtype": "bfloat16",
    }).encode()
