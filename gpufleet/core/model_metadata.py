"""Turn a parsed GGUF header into the :class:`ModelMetadata` that estimation uses."""

from __future__ import annotations

from gpufleet.core.gguf import GGUFHeader
from gpufleet.core.schemas import ModelMetadata


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


def metadata_from_gguf(header: GGUFHeader, file_size: int) -> ModelMetadata:
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
    n_kv_heads = optional("attention.head_count_kv", n_heads)
    head_dim = n_embd // n_heads
    tokens = header.get("tokenizer.ggml.tokens")
    vocab = optional("vocab_size", len(tokens) if isinstance(tokens, list) else 0)
    file_type = header.get("general.file_type")
    return ModelMetadata(
        format="gguf",
        architecture=arch,
        file_size=file_size,
        tensor_bytes=header.tensor_bytes,
        n_params=sum(t.n_elements for t in header.tensors),
        n_layers=required("block_count"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim_k=optional("attention.key_length", head_dim),
        head_dim_v=optional("attention.value_length", head_dim),
        embedding_length=n_embd,
        context_length=required("context_length"),
        vocab_size=vocab,
        file_type=file_type if isinstance(file_type, int) else None,
    )
