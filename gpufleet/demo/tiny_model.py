"""Write a tiny random-weight llama GGUF that real llama.cpp loads and serves.

Why: demos, integration tests and CI need a model that exercises the whole
path (GGUF parsing, placement, launching llama.cpp, an OpenAI-style chat
request) without downloading gigabytes. The weights are noise, so the
replies are gibberish, but every structural piece is the real thing: the
llama tensor layout, an SPM ("llama") tokenizer whose 256 byte tokens let
any UTF-8 text tokenize through byte fallback, and a ChatML template so
``/v1/chat/completions`` works.

Usage: ``python -m gpufleet.demo.tiny_model OUT.gguf``
"""

from __future__ import annotations

import os
import string
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType, quants

__all__ = ["TinyModelShape", "TinyVocab", "build_vocab", "main", "write_tiny_llama_gguf"]

ARCH = "llama"

# ChatML: the simplest widely understood template; llama.cpp's jinja engine
# renders it, and its markers are in the vocabulary as control tokens so
# the server recognises <|im_end|> as end-of-generation.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Weight types the generator writes; quantized ones go through gguf-py's reference quantizers.
DTYPES = ("f32", "f16", "q8_0", "q4_0")
_QUANT_TYPES = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}
_FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
    "q4_0": LlamaFileType.MOSTLY_Q4_0,
}

_WORDS = ("hello", "world", "the", "and", "model", "tiny", "llama", "fleet", "gpu", "hi")


@dataclass(frozen=True)
class TinyModelShape:
    """Hyper-parameters of the generated model; defaults give ~0.5 MB."""

    n_layers: int = 2
    hidden: int = 64
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn: int = 128
    context_length: int = 512
    dtype: str = "f32"  # one of DTYPES: "f32", "f16", "q8_0", "q4_0" (matrices; norms stay F32)
    n_vocab: int = 0  # 0: the minimal vocabulary; larger pads it with unused tokens
    tied_output: bool = False  # no output.weight: llama.cpp reuses token_embd

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.hidden % self.n_heads:
            raise ValueError("hidden must be divisible by n_heads")
        if self.n_heads % self.n_kv_heads:
            raise ValueError("n_heads must be divisible by n_kv_heads (GQA groups)")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads


@dataclass(frozen=True)
class TinyVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]


def build_vocab(n_vocab: int = 0) -> TinyVocab:
    """A minimal SentencePiece-style vocabulary in the layout llama.cpp's SPM
    tokenizer expects: special tokens first, then the 256 ``<0xXX>`` byte
    tokens (ids 3..258, which is where byte fallback looks), then ordinary
    pieces with descending scores so longer merges win."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    scores = [0.0] * len(tokens)

    pieces = ["\u2581"] + [c for c in string.printable[:95] if c != " "]
    pieces += ["\u2581" + w for w in _WORDS]
    for i, piece in enumerate(pieces):
        tokens.append(piece)
        types.append(TokenType.NORMAL)
        scores.append(-1.0 - i * 0.01)

    for marker in ("<|im_start|>", "<|im_end|>"):
        tokens.append(marker)
        types.append(TokenType.CONTROL)
        scores.append(0.0)
    for i in range(len(tokens), n_vocab):  # padding to a realistic vocabulary size
        tokens.append(f"<unused{i}>")
        types.append(TokenType.UNUSED)
        scores.append(-1000.0)
    return TinyVocab(tokens, scores, [int(t) for t in types])


def _weight(rng: np.random.Generator, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """Small normal noise: keeps activations finite through the stack.
    Quantized types come back as the raw block bytes (uint8) gguf-py writes."""
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    if dtype in _QUANT_TYPES:
        return quants.quantize(w, _QUANT_TYPES[dtype])
    return w.astype(np.float16) if dtype == "f16" else w


def _tensors(shape: TinyModelShape, n_vocab: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """llama tensor set with numpy shapes (out, in); GGUFWriter reverses
    them into ggml's (in, out) order. Norms stay F32 as llama.cpp expects."""
    rng = np.random.default_rng(seed)
    h, f, dt = shape.hidden, shape.ffn, shape.dtype
    kv = shape.n_kv_heads * shape.head_dim
    ones = np.ones(h, dtype=np.float32)
    out: list[tuple[str, np.ndarray]] = [
        ("token_embd.weight", _weight(rng, (n_vocab, h), dt)),
        ("output_norm.weight", ones.copy()),
    ]
    if not shape.tied_output:
        out.append(("output.weight", _weight(rng, (n_vocab, h), dt)))
    for i in range(shape.n_layers):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", ones.copy()),
            (p + "attn_q.weight", _weight(rng, (h, h), dt)),
            (p + "attn_k.weight", _weight(rng, (kv, h), dt)),
            (p + "attn_v.weight", _weight(rng, (kv, h), dt)),
            (p + "attn_output.weight", _weight(rng, (h, h), dt)),
            (p + "ffn_norm.weight", ones.copy()),
            (p + "ffn_gate.weight", _weight(rng, (f, h), dt)),
            (p + "ffn_up.weight", _weight(rng, (f, h), dt)),
            (p + "ffn_down.weight", _weight(rng, (h, f), dt)),
        ]
    return out


def _add_hparams(w: GGUFWriter, shape: TinyModelShape, n_vocab: int, name: str) -> None:
    """The llama.* keys llama.cpp's loader requires (and a few it defaults)."""
    w.add_name(name)
    w.add_file_type(_FILE_TYPES[shape.dtype])
    w.add_context_length(shape.context_length)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.n_layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.n_heads)
    w.add_head_count_kv(shape.n_kv_heads)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)


def _add_tokenizer(w: GGUFWriter, vocab: TinyVocab) -> None:
    """SPM tokenizer metadata; bos is prepended like real llama models."""
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)


def write_tiny_llama_gguf(
    path: str | os.PathLike[str],
    shape: TinyModelShape = TinyModelShape(),
    seed: int = 0,
    name: str = "tiny-llama",
) -> Path:
    """Write the model to `path` (parents created) and return it as a Path.

    Deterministic for a given (shape, seed, name), so tests can compare
    files byte for byte.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(shape.n_vocab)
    writer = GGUFWriter(out, ARCH)
    try:
        _add_hparams(writer, shape, len(vocab.tokens), name)
        _add_tokenizer(writer, vocab)
        for tensor_name, array in _tensors(shape, len(vocab.tokens), seed):
            raw = _QUANT_TYPES.get(shape.dtype) if array.dtype == np.uint8 else None
            writer.add_tensor(tensor_name, array, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m gpufleet.demo.tiny_model OUT.gguf [--f16]``."""
    args = sys.argv[1:] if argv is None else argv
    paths = [a for a in args if not a.startswith("--")]
    if len(paths) != 1 or any(a not in ("--f16",) for a in args if a.startswith("--")):
        print("usage: python -m gpufleet.demo.tiny_model OUT.gguf [--f16]", file=sys.stderr)
        return 2
    shape = TinyModelShape(dtype="f16" if "--f16" in args else "f32")
    out = write_tiny_llama_gguf(paths[0], shape)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
