"""Turn a parsed GGUF header into the :class:`ModelMetadata` that estimation uses.

Why per-layer detail: llama.cpp places whole layers on devices (``--n-gpu-layers``,
``--tensor-split``), so the estimate needs the exact bytes of every block, of the
input layer (token embedding, always on the CPU) and of the output layer (on the
last GPU once ``-ngl`` exceeds the block count). These come from the tensor table,
sized exactly by ggml block sizes (:mod:`gpufleet.core.gguf`), never from the file size.

Attention variants are read from the header keys llama.cpp itself reads
(``llama-model.cpp``, ``llama-hparams.cpp``): sliding-window layers, MLA
(DeepSeek-style ``kv_lora_rank``), per-layer KV head counts, experts.
"""

from __future__ import annotations

import re

from gpufleet.core.gguf import GGUFHeader, GGUFStringArray, TensorInfo
from gpufleet.core.llama_swa import sliding_window
from gpufleet.core.metadata import Category, ModelMetadata, WeightFile

#: llama.cpp's ``llama_ftype`` ids (``general.file_type``) -> the names its quantize tool uses.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}

_INPUT_TENSORS = ("token_embd.", "token_types.", "position_embd.", "token_embd_norm.")
_OUTPUT_TENSORS = ("output.", "output_norm.", "cls.", "cls_out.")
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_EMBEDDING_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "modern-bert"}


class UnsupportedModel(ValueError):
    """The header parsed but lacks what gpufleet needs to estimate and run it."""


def _as_int(value: object, key: str) -> int:
    """Some keys (head_count_kv in hybrid models) are per-layer arrays; the
    largest entry is what sizes the KV cache of the biggest layer."""
    if isinstance(value, list):
        ints = [int(v) for v in value if isinstance(v, int | float)]
        if not ints:
            raise UnsupportedModel(f"metadata key {key} is an empty or non-numeric array")
        return max(ints)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnsupportedModel(f"metadata key {key} is {value!r}, expected a number")
    return int(value)


def split_tensors(tensors: tuple[TensorInfo, ...], n_layers: int) -> tuple[list[int], int, int, int]:
    """Bytes per block, of the input layer, the output layer, and of the rest.

    A ``blk.N`` beyond ``n_layers`` (e.g. a multi-token-prediction head that
    llama.cpp does not load as a block) counts as "other"."""
    layers = [0] * n_layers
    embedding = output = other = 0
    for t in tensors:
        m = _BLOCK.match(t.name)
        if m and int(m.group(1)) < n_layers:
            layers[int(m.group(1))] += t.n_bytes
        elif t.name.startswith(_INPUT_TENSORS):
            embedding += t.n_bytes
        elif t.name.startswith(_OUTPUT_TENSORS):
            output += t.n_bytes
        else:
            other += t.n_bytes
    return layers, embedding, output, other


#: ggml types the CPU backend repacks on x86-64 (``ggml_repack_get_optimal_repack_type``,
#: ggml/src/ggml-cpu/repack.cpp:4974-5135, b11434): with AVX2 Q4_0, Q4_K, IQ4_NL and MXFP4;
#: with AVX-512 also Q2_K (counted always: a reservation errs high). Q5_K, Q6_K, Q8_0 and
#: Q1_0 are repacked only on ARM (NEON dot-product / i8mm), which this table does not model.
REPACK_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4", "Q2_K"})
#: Rows must come in groups of 8 (``cur->ne[1] % 8 == 0``) for those x86 kernels.
REPACK_ROW_GROUP = 8


def repacked(t: TensorInfo) -> bool:
    """Whether llama.cpp's CPU backend keeps a repacked copy of this weight: a matrix of a
    repackable type with rows in groups of 8, used by a matrix product (2-D MUL_MAT, 3-D
    expert MUL_MAT_ID; ``extra_buffer_type::supports_op``, repack.cpp:5191-5215)."""
    return (t.type_name in REPACK_TYPES and len(t.shape) in (2, 3)
            and t.shape[1] % REPACK_ROW_GROUP == 0)


def repack_bytes(tensors: tuple[TensorInfo, ...], n_layers: int, tied: bool) -> tuple[list[int], int]:
    """(repacked bytes per block, repacked bytes of the output matrix). The token embedding is
    read by GET_ROWS and never repacked, but a tied output is a duplicate of it used by a
    matrix product, so that copy is."""
    layers, output = [0] * n_layers, 0
    for t in tensors:
        if not repacked(t):
            continue
        m = _BLOCK.match(t.name)
        if m and int(m.group(1)) < n_layers:
            layers[int(m.group(1))] += t.n_bytes
        elif t.name == "output.weight" or (tied and t.name == "token_embd.weight"):
            output += t.n_bytes
    return layers, output


def swa_layers(arch: str, n: int, window: int | None, pattern: object) -> list[bool]:
    """Which layers use the sliding window, as llama.cpp decides it (:mod:`gpufleet.core.llama_swa`)."""
    return sliding_window(arch, n, window, pattern)[1]


def _weight_bytes_by_dtype(tensors: tuple[TensorInfo, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tensors:
        out[t.type_name] = out.get(t.type_name, 0) + t.n_bytes
    return out


def metadata_from_gguf(header: GGUFHeader, file_size: int) -> ModelMetadata:
    """Exact per-layer sizes and attention shape of one GGUF model."""
    arch = header.architecture
    if not arch:
        raise UnsupportedModel("GGUF header has no general.architecture")

    def required(suffix: str) -> int:
        value = header.arch_value(suffix)
        if value is None:
            raise UnsupportedModel(f"GGUF header lacks {arch}.{suffix}")
        return _as_int(value, f"{arch}.{suffix}")

    def optional(suffix: str, default: int) -> int:
        value = header.arch_value(suffix)
        return default if value is None else _as_int(value, f"{arch}.{suffix}")

    n_embd = required("embedding_length")
    n_heads = required("attention.head_count")
    if n_heads <= 0:
        raise UnsupportedModel(f"{arch}.attention.head_count must be positive, got {n_heads}")
    n_layers = required("block_count")
    n_kv_heads = optional("attention.head_count_kv", n_heads)
    kv_per_layer = header.arch_value("attention.head_count_kv")
    head_dim = n_embd // n_heads
    tokens = header.get("tokenizer.ggml.tokens")
    vocab = optional("vocab_size", len(tokens) if isinstance(tokens, list | GGUFStringArray) else 0)
    file_type = header.get("general.file_type")
    file_type = file_type if isinstance(file_type, int) and not isinstance(file_type, bool) else None
    layers, embedding, output, other = split_tensors(header.tensors, n_layers)
    key_window = header.arch_value("attention.sliding_window")
    window, swa = sliding_window(arch, n_layers, _as_int(key_window, f"{arch}.attention.sliding_window")
                                 if key_window is not None else None,
                                 header.arch_value("attention.sliding_window_pattern"))
    n_params = sum(t.n_elements for t in header.tensors)
    tied = not any(t.name == "output.weight" for t in header.tensors)
    repack_layers, repack_output = repack_bytes(header.tensors, n_layers, tied)
    return ModelMetadata(
        format="gguf",
        architecture=arch,
        category="embedding" if arch in _EMBEDDING_ARCHS else "llm",
        file_size=file_size,
        tensor_bytes=header.tensor_bytes,
        weight_bytes_by_dtype=_weight_bytes_by_dtype(header.tensors),
        n_params=n_params,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim_k=optional("attention.key_length", head_dim),
        head_dim_v=optional("attention.value_length", head_dim),
        embedding_length=n_embd,
        feed_forward_length=optional("feed_forward_length", 0),
        context_length=required("context_length"),
        vocab_size=vocab,
        file_type=file_type,
        quantization=FILE_TYPE_NAMES.get(file_type) if file_type is not None else None,
        bits_per_weight=round(header.tensor_bytes * 8 / n_params, 3) if n_params else None,
        layer_bytes=layers,
        embedding_bytes=embedding,
        output_bytes=output,
        tied_embeddings=tied,
        repack_layer_bytes=repack_layers,
        repack_output_bytes=repack_output,
        other_bytes=other,
        max_tensor_bytes=max((t.n_bytes for t in header.tensors if _BLOCK.match(t.name)), default=0),
        n_kv_heads_per_layer=[_as_int(v, "head_count_kv") for v in kv_per_layer][:n_layers]
        if isinstance(kv_per_layer, list) else [],
        sliding_window=window,
        swa_layers=swa,
        kv_lora_rank=optional("attention.kv_lora_rank", 0),
        rope_head_dim=optional("rope.dimension_count", 0) if optional("attention.kv_lora_rank", 0) else 0,
        n_experts=optional("expert_count", 0),
        n_experts_used=optional("expert_used_count", 0),
        expert_feed_forward_length=optional("expert_feed_forward_length", 0),
        n_shared_experts=optional("expert_shared_count", 0),
    )


def metadata_from_ctranslate2(weights: list[WeightFile], category: Category | None = None) -> ModelMetadata:
    """A CTranslate2 directory: only the weight size is known (``model.bin`` is CTranslate2's own
    format, and its ``config.json`` holds decoding settings, not the architecture). vox-box serves
    such directories with faster-whisper, so the category is speech-to-text unless the user says
    otherwise; the audio estimate needs only the size."""
    size = sum(w.size for w in weights)
    return ModelMetadata(format="ctranslate2", architecture="whisper (CTranslate2)",
                         category=category or "speech-to-text", files=weights, file_size=size, tensor_bytes=size,
                         notes=["CTranslate2 model (faster-whisper format): served by vox-box"])
