"""ModelMetadata for a safetensors checkpoint: exact bytes from the headers,
architecture and shapes from ``config.json`` (pure: parsed inputs in).

Per-layer bytes come from tensor names: transformers names repeating blocks
``model.layers.N.``, ``transformer.h.N.``, ``encoder.layer.N.`` or ``blocks.N.``;
the embedding is ``embed_tokens``/``wte``/``word_embeddings``, the output
projection ``lm_head``. Parameter counts are element counts; for packed
quantized checkpoints (GPTQ/AWQ pack 8 int4 values per I32) they undercount,
which a note says, while byte counts stay exact.
"""

from __future__ import annotations

import re
from collections import defaultdict

from gpufleet.core.metadata import Category, ModelMetadata, WeightFile
from gpufleet.core.model_config import ModelConfig
from gpufleet.core.model_files import RepoFile
from gpufleet.core.safetensors import SafetensorsHeader

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)\.")
EMBED_RE = re.compile(r"(?:embed_tokens|\bwte\b|word_embeddings|tok_embeddings)")
OUTPUT_RE = re.compile(r"(?:^|\.)lm_head\.")


def metadata_from_safetensors(
    config: ModelConfig,
    headers: list[SafetensorsHeader],
    files: list[RepoFile],
    category: Category,
) -> ModelMetadata:
    by_dtype: dict[str, int] = defaultdict(int)
    layers: dict[int, int] = defaultdict(int)
    embedding = output = other = n_params = 0
    for header in headers:
        for t in header.tensors:
            by_dtype[t.dtype] += t.n_bytes
            n_params += t.n_elements
            if m := LAYER_RE.search(t.name):
                layers[int(m.group(1))] += t.n_bytes
            elif EMBED_RE.search(t.name):
                embedding += t.n_bytes
            elif OUTPUT_RE.search(t.name):
                output += t.n_bytes
            else:
                other += t.n_bytes
    tensor_bytes = sum(by_dtype.values())
    n_layers = config.n_layers or (max(layers) + 1 if layers else 0)
    notes = []
    if config.quant_method and "I32" in by_dtype:
        notes.append(f"{config.quant_method} packs weights into I32: n_params counts packed elements")
    return ModelMetadata(
        format="safetensors",
        architecture=config.architecture,
        category=category,
        files=[WeightFile(path=f.path, size=f.size) for f in files],
        file_size=sum(f.size for f in files),
        tensor_bytes=tensor_bytes,
        weight_bytes_by_dtype=dict(sorted(by_dtype.items())),
        n_params=n_params,
        n_layers=n_layers,
        n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads,
        head_dim_k=config.head_dim,
        head_dim_v=config.v_head_dim or config.head_dim,
        embedding_length=config.hidden_size,
        feed_forward_length=config.intermediate_size,
        context_length=config.context_length,
        vocab_size=config.vocab_size,
        quantization=config.quant_method,
        bits_per_weight=round(tensor_bytes * 8 / n_params, 3) if n_params else None,
        torch_dtype=config.torch_dtype,
        layer_bytes=[layers.get(i, 0) for i in range(max(layers) + 1)] if layers else [],
        embedding_bytes=embedding,
        output_bytes=output,
        other_bytes=other,
        sliding_window=config.sliding_window,
        kv_lora_rank=config.kv_lora_rank,
        rope_head_dim=config.rope_head_dim,
        n_experts=config.n_experts,
        n_experts_used=config.n_experts_used,
        notes=notes,
    )
