"""GGUF header -> ModelMetadata: per-layer sizes exactly from the tensor table, attention variants
from the header keys, with the arithmetic beside each case."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.core.gguf import GGUFHeader, TensorInfo, parse_gguf_header
from gpufleet.core.model_metadata import UnsupportedModel, metadata_from_gguf, swa_layers
from gpufleet.demo.tiny_model import TinyModelShape, build_vocab, write_tiny_llama_gguf

N_VOCAB = len(build_vocab().tokens)


def read(path: Path):  # noqa: ANN201 - ModelMetadata
    data = path.read_bytes()
    return metadata_from_gguf(parse_gguf_header(data, len(data)), len(data))


def test_f32_tiny_model_layer_bytes(tmp_path: Path) -> None:
    m = read(write_tiny_llama_gguf(tmp_path / "t.gguf"))  # 2 blocks, hidden 64, ffn 128, F32
    # block: 2 norms x 64 x 4 + q,k,v,o 4 x 64 x 64 x 4 + gate,up,down 3 x 128 x 64 x 4 = 164,352
    assert m.layer_bytes == [512 + 65536 + 98304] * 2
    assert m.embedding_bytes == N_VOCAB * 64 * 4
    assert m.output_bytes == N_VOCAB * 64 * 4 + 64 * 4  # projection + its norm
    assert m.other_bytes == 0 and not m.tied_embeddings
    assert sum(m.layer_bytes) + m.embedding_bytes + m.output_bytes == m.tensor_bytes
    assert m.quantization == "F32" and m.bits_per_weight == pytest.approx(32, abs=0.01)
    assert m.weight_bytes_by_dtype == {"F32": m.tensor_bytes}


def test_q8_0_tied_model(tmp_path: Path) -> None:
    shape = TinyModelShape(n_layers=3, hidden=64, n_heads=4, n_kv_heads=2, ffn=128, dtype="q8_0", tied_output=True)
    m = read(write_tiny_llama_gguf(tmp_path / "q.gguf", shape))
    # Q8_0 = 34 bytes per 32 weights. q, o: 64 x 64 -> 128 blocks = 4352 B each; k, v: 32 x 64 -> 2176 B each;
    # gate, up, down: 128 x 64 -> 256 blocks = 8704 B each; norms 2 x 256 B F32
    block = 2 * 4352 + 2 * 2176 + 3 * 8704 + 2 * 256
    assert m.layer_bytes == [block] * 3
    assert m.tied_embeddings and m.output_bytes == 64 * 4  # only output_norm
    assert m.embedding_bytes == N_VOCAB * 64 // 32 * 34
    assert m.quantization == "Q8_0"
    assert m.n_kv_heads == 2 and m.head_dim_k == 16


def header(arch: str, metadata: dict[str, object], names: list[str]) -> GGUFHeader:
    tensors = tuple(TensorInfo(n, (10,), 0, 0, 10, 40) for n in names)
    meta = {"general.architecture": arch, f"{arch}.embedding_length": 64, f"{arch}.attention.head_count": 4,
            f"{arch}.block_count": 2, f"{arch}.context_length": 4096, **metadata}
    return GGUFHeader(version=3, metadata=meta, tensors=tensors, alignment=32, header_size=0, data_offset=0)


def test_blocks_beyond_block_count_and_strays_are_other() -> None:
    # blk.2 is a multi-token-prediction head llama.cpp does not load as a block; rope_freqs is in no block
    h = header("llama", {}, ["blk.0.a", "blk.1.a", "blk.2.a", "rope_freqs.weight", "token_embd.weight"])
    m = metadata_from_gguf(h, 1000)
    assert (m.layer_bytes, m.other_bytes, m.embedding_bytes, m.output_bytes) == ([40, 40], 80, 40, 0)
    assert m.tied_embeddings


def test_sliding_window_from_the_architecture_default() -> None:
    h = header("gemma2", {"gemma2.attention.sliding_window": 4096}, [])
    m = metadata_from_gguf(h, 0)
    assert m.sliding_window == 4096 and m.swa_layers == [True, False]  # pattern 2: il % 2 < 1 slides


@pytest.mark.parametrize(("arch", "keys", "window"), [
    ("gemma2", {}, 4096),  # no key: gemma2's default (gemma2.cpp:5)
    ("smallthinker", {"smallthinker.attention.sliding_window": 1024}, 4096),  # forced (smallthinker.cpp:8)
    ("llama4", {}, 8192),  # chunked attention, 8192 (llama4.cpp:13-14)
    ("llama4", {"llama4.attention.sliding_window": 0}, 0),  # key 0: no chunking
    ("phi3", {"phi3.attention.sliding_window": 2047}, 0),  # read, then disabled
])
def test_effective_window_is_llama_cpps(arch: str, keys: dict[str, object], window: int) -> None:
    m = metadata_from_gguf(header(arch, keys, []), 0)
    assert m.sliding_window == window and bool(m.swa_layers) == bool(window)


@pytest.mark.parametrize(("arch", "n", "window", "pattern", "expected"), [
    ("gemma3", 7, 512, None, [True] * 5 + [False, True]),  # pattern 6: il % 6 < 5
    ("gemma3", 3, 512, 2, [True, False, True]),  # the header's pattern wins
    ("gemma3", 3, 512, [False, True, True], [False, True, True]),  # explicit per-layer flags
    ("llama", 3, 4096, None, []),  # llama.cpp ignores a window on architectures without SWA
    ("gemma3", 2, None, None, []),  # gemma3 slides only when the key is present and > 0 (gemma3.cpp:4-11)
    ("gemma2", 2, None, None, [True, False]),  # gemma2 always slides: 4096 without the key (gemma2.cpp:5)
    ("phi3", 2, 2047, None, []),  # phi3 reads the key and disables SWA (phi3.cpp:13-23)
    ("mistral3", 2, 4096, None, []),  # never read
    ("exaone4", 30, 4096, None, []),  # exaone4 slides only with 64 blocks (exaone4.cpp:4)
    ("exaone4", 5, None, None, []),
    ("cohere2moe", 5, 512, None, [False, True, True, True, False]),  # dense first: il % 4 != 0
    ("gemma3", 3, 512, 0, [True, True, True]),  # pattern 0: every layer slides
    ("gemma3", 3, 512, 1, [False, False, False]),  # pattern 1: none (il % 1 < 0 never holds)
    ("gpt-oss", 3, 128, None, [True, False, True]),
])
def test_swa_layers(arch: str, n: int, window: int, pattern: object, expected: list[bool]) -> None:
    assert swa_layers(arch, n, window, pattern) == expected


def test_mla_and_experts() -> None:
    h = header("deepseek2", {
        "deepseek2.attention.kv_lora_rank": 512, "deepseek2.rope.dimension_count": 64,
        "deepseek2.expert_count": 256, "deepseek2.expert_used_count": 8,
        "deepseek2.expert_feed_forward_length": 2048, "deepseek2.expert_shared_count": 1,
        "deepseek2.attention.head_count_kv": [1, 1],
    }, ["blk.0.x", "blk.1.x", "output.weight"])
    m = metadata_from_gguf(h, 0)
    assert (m.kv_lora_rank, m.rope_head_dim) == (512, 64)
    assert (m.n_experts, m.n_experts_used, m.expert_feed_forward_length, m.n_shared_experts) == (256, 8, 2048, 1)
    assert m.n_kv_heads_per_layer == [1, 1] and m.output_bytes == 40 and not m.tied_embeddings


def test_missing_keys_are_refused_with_the_key_name() -> None:
    h = header("llama", {}, [])
    del h.metadata["llama.block_count"]
    with pytest.raises(UnsupportedModel, match="llama.block_count"):
        metadata_from_gguf(h, 0)


def test_vocab_size_falls_back_to_the_token_count(tmp_path: Path) -> None:
    """Many converters write no `<arch>.vocab_size`; llama.cpp then counts tokenizer.ggml.tokens
    (a lazily decoded string array, which must count as the token list)."""
    import dataclasses

    data = write_tiny_llama_gguf(tmp_path / "t.gguf").read_bytes()
    h = parse_gguf_header(data, len(data))
    without = {k: v for k, v in h.metadata.items() if k != "llama.vocab_size"}
    m = metadata_from_gguf(dataclasses.replace(h, metadata=without), len(data))
    assert m.vocab_size == N_VOCAB > 0
