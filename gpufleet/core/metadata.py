"""What gpufleet knows about a model before anything is downloaded.

One model, whatever its format: GGUF headers (llama.cpp) and safetensors headers
plus ``config.json`` (vLLM) are both reduced to this, so that estimation and
placement never look at a file format. Every size is in bytes. Fields that a
format cannot provide keep their zero/empty default and estimation says so
(it never treats a missing figure as zero memory).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# ctranslate2: a CTranslate2 model directory (model.bin beside its config and vocabulary), the
# format of faster-whisper's speech-to-text models, which vox-box serves.
ModelFormat = Literal["gguf", "safetensors", "ctranslate2"]
Category = Literal["llm", "embedding", "reranker", "image", "speech-to-text", "text-to-speech"]
CATEGORIES: tuple[str, ...] = ("llm", "embedding", "reranker", "image", "speech-to-text", "text-to-speech")


class WeightFile(BaseModel):
    """One file the model is made of (a GGUF shard, a safetensors shard, an mmproj)."""

    path: str
    size: int = Field(ge=0)


class ModelMetadata(BaseModel):
    """Architecture and sizes of one model, as read from its headers."""

    format: ModelFormat
    architecture: str
    category: Category = "llm"
    files: list[WeightFile] = Field(default_factory=list)
    file_size: int = Field(ge=0, description="bytes of all weight files together")
    tensor_bytes: int = Field(ge=0, description="bytes of tensor data (weights)")
    weight_bytes_by_dtype: dict[str, int] = Field(default_factory=dict)
    n_params: int = 0
    n_layers: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim_k: int = 0
    head_dim_v: int = 0
    embedding_length: int = 0
    feed_forward_length: int = 0
    context_length: int = 0
    vocab_size: int = 0
    file_type: int | None = None
    quantization: str | None = Field(
        default=None, description="GGUF file type name (Q4_K_M, ...) or the checkpoint's quant method"
    )
    bits_per_weight: float | None = None
    torch_dtype: str | None = None

    # Per-layer detail for splitting a model across devices.
    layer_bytes: list[int] = Field(
        default_factory=list, description="weight bytes of each repeating block (blk.N / model.layers.N)"
    )
    embedding_bytes: int = Field(
        default=0, description="input layer: token embedding table (and position/type embeddings, their norm)"
    )
    output_bytes: int = Field(
        default=0, description="output layer: output projection and its norm (norm only when tied to the embedding)"
    )
    tied_embeddings: bool = Field(
        default=False, description="no output projection: llama.cpp reuses the token embedding as the output"
    )
    other_bytes: int = Field(default=0, description="tensors in no block and neither of the above")
    repack_layer_bytes: list[int] = Field(
        default_factory=list, description="per block: bytes of the matrices llama.cpp's CPU backend repacks "
        "(a second copy in CPU_REPACK when the block runs on the CPU); empty: not read")
    repack_output_bytes: int = Field(
        default=0, description="bytes of the output matrix (the token embedding when tied) the CPU repacks")
    max_tensor_bytes: int = Field(
        default=0, description="largest single tensor of the repeating blocks (0: not read); "
        "llama.cpp stages one CPU weight at a time on GPU 0 at partial offload")
    n_kv_heads_per_layer: list[int] = Field(default_factory=list, description="empty when uniform")
    sliding_window: int = 0
    swa_layers: list[bool] = Field(default_factory=list, description="layers that use the sliding window")
    kv_lora_rank: int = Field(default=0, description="MLA compressed KV width (DeepSeek-style)")
    rope_head_dim: int = Field(default=0, description="MLA decoupled RoPE key width")
    n_experts: int = 0
    n_experts_used: int = 0
    expert_feed_forward_length: int = Field(default=0, description="FFN width of one expert (MoE)")
    n_shared_experts: int = 0
    kv_cache_dtype: str | None = Field(
        default=None, description="vLLM: KV dtype the checkpoint asks for (fp8 ...); None: the model dtype"
    )
    mmproj_bytes: int = Field(default=0, description="multimodal projector file, when one is deployed")
    notes: list[str] = Field(default_factory=list, description="what could not be read, and why")
