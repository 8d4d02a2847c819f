"""Architecture, shapes and category from a checkpoint's ``config.json`` (pure).

transformers' config keys vary by family (``num_hidden_layers`` vs ``n_layer``,
``num_key_value_heads`` absent meaning MHA, multimodal models nesting the LLM
under ``text_config``); this module reads the common spellings into one
:class:`ModelConfig`. Diffusers pipelines have ``model_index.json`` instead and are
images. Category detection follows what the architecture name and the files say:
``*ForSequenceClassification`` with "rerank" → reranker, sentence-transformers
files or a bare encoder (``BertModel``) → embedding, Whisper → speech-to-text, …
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gpufleet.core.metadata import Category

MAX_CONFIG_BYTES = 4 << 20


class ConfigError(ValueError):
    """config.json is missing what gpufleet needs, or is not JSON."""


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    model_type: str = ""
    n_layers: int = 0
    hidden_size: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0
    intermediate_size: int = 0
    context_length: int = 0
    vocab_size: int = 0
    torch_dtype: str | None = None
    sliding_window: int = 0
    kv_lora_rank: int = 0
    rope_head_dim: int = 0
    v_head_dim: int = 0
    n_experts: int = 0
    n_experts_used: int = 0
    quant_method: str | None = None
    tie_word_embeddings: bool = False


def _first_int(cfg: dict[str, object], *keys: str) -> int:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def load_json_object(text: bytes, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, object]:
    if len(text) > max_bytes:
        raise ConfigError(f"{what} is {len(text)} bytes, over the {max_bytes}-byte limit")
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{what} is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} is not a JSON object")
    return raw


def parse_config(text: bytes) -> ModelConfig:
    """Read ``config.json``. The LLM part of multimodal configs (``text_config``)
    supplies shapes; the outer ``architectures`` names the model."""
    raw = load_json_object(text, "config.json")
    archs = raw.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    model_type = raw.get("model_type") if isinstance(raw.get("model_type"), str) else ""
    if not arch and not model_type:
        raise ConfigError("config.json names neither `architectures` nor `model_type`")
    text_cfg = raw.get("text_config")
    cfg = {**raw, **text_cfg} if isinstance(text_cfg, dict) else raw
    hidden = _first_int(cfg, "hidden_size", "n_embd", "d_model", "dim")
    heads = _first_int(cfg, "num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")
    kv_heads = _first_int(cfg, "num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num") or heads
    # MLA (DeepSeek): keys are the no-RoPE part plus the decoupled RoPE part.
    mla_key = _first_int(cfg, "qk_nope_head_dim") + _first_int(cfg, "qk_rope_head_dim")
    head_dim = _first_int(cfg, "head_dim") or mla_key or (hidden // heads if heads else 0)
    quant = raw.get("quantization_config")
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    return ModelConfig(
        architecture=arch or model_type,
        model_type=model_type,
        n_layers=_first_int(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers"),
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_first_int(cfg, "intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim"),
        context_length=_first_int(
            cfg, "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
            "max_source_positions",
        ),
        vocab_size=_first_int(cfg, "vocab_size", "padded_vocab_size"),
        torch_dtype=dtype if isinstance(dtype, str) else None,
        sliding_window=_first_int(cfg, "sliding_window"),
        kv_lora_rank=_first_int(cfg, "kv_lora_rank"),
        rope_head_dim=_first_int(cfg, "qk_rope_head_dim"),
        v_head_dim=_first_int(cfg, "v_head_dim"),
        n_experts=_first_int(cfg, "num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts"),
        n_experts_used=_first_int(cfg, "num_experts_per_tok", "moe_topk", "num_experts_per_token"),
        quant_method=quant.get("quant_method") if isinstance(quant, dict) else None,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def diffusers_pipeline(text: bytes) -> str:
    """The pipeline class a ``model_index.json`` names (``StableDiffusionXLPipeline``)."""
    raw = load_json_object(text, "model_index.json")
    name = raw.get("_class_name")
    if not isinstance(name, str) or not name:
        raise ConfigError("model_index.json has no _class_name")
    return name


_SPEECH_TO_TEXT = ("whisper", "wav2vec2", "speech2text", "hubert", "sensevoice", "paraformer", "funasr")
_TEXT_TO_SPEECH = ("tts", "bark", "vits", "speecht5", "cosyvoice", "parler", "kokoro", "fastspeech", "xtts")
_ENCODERS = ("BertModel", "XLMRobertaModel", "RobertaModel", "NomicBertModel", "MPNetModel",
             "DistilBertModel", "NewModel", "ModernBertModel", "GteModel")
# Files sentence-transformers writes next to an embedding model.
_EMBEDDING_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
# GGUF general.architecture values of encoder-only models llama.cpp serves as embeddings.
_GGUF_EMBEDDING_ARCHS = ("bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder",
                         "modern-bert", "neo-bert")


def category_from_config(cfg: ModelConfig, repo_id: str = "", files: tuple[str, ...] = ()) -> Category:
    """Best guess from architecture, model type, repo name and files; users override with --category."""
    arch, name = cfg.architecture.lower(), repo_id.lower()
    text = f"{arch} {cfg.model_type.lower()} {name}"
    if any(k in text for k in _SPEECH_TO_TEXT):
        return "speech-to-text"
    if any(k in text for k in _TEXT_TO_SPEECH):
        return "text-to-speech"
    if "rerank" in name or (arch.endswith("forsequenceclassification") and "rerank" in text):
        return "reranker"
    basenames = {f.rsplit("/", 1)[-1] for f in files}
    if basenames & set(_EMBEDDING_FILES) or cfg.architecture in _ENCODERS or "embed" in name:
        return "embedding"
    return "llm"


def category_from_gguf(architecture: str, repo_id: str = "", pooling_type: int | None = None) -> Category:
    """GGUF: encoder architectures (bert, nomic-bert, …) serve embeddings; a rank
    pooling type (LLAMA_POOLING_TYPE_RANK = 4) or a "rerank" name makes a reranker."""
    name = repo_id.lower()
    if pooling_type == 4 or "rerank" in name:
        return "reranker"
    if architecture in _GGUF_EMBEDDING_ARCHS or "embed" in name:
        return "embedding"
    if any(k in architecture for k in ("whisper",)):
        return "speech-to-text"
    return "llm"
