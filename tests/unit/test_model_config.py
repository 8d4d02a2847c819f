"""config.json / model_index.json → architecture, shapes and category."""

from __future__ import annotations

import json

import pytest

from gpufleet.core.model_config import (
    ConfigError,
    category_from_config,
    category_from_gguf,
    diffusers_pipeline,
    parse_config,
)

LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
    "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80,
    "intermediate_size": 28672, "max_position_embeddings": 131072, "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}


def cfg(doc: dict[str, object]) -> bytes:
    return json.dumps(doc).encode()


def test_llama_shapes() -> None:
    c = parse_config(cfg(LLAMA_70B))
    assert (c.architecture, c.n_layers, c.n_heads, c.n_kv_heads) == ("LlamaForCausalLM", 80, 64, 8)
    assert c.head_dim == 128  # 8192 hidden / 64 heads
    assert (c.context_length, c.vocab_size, c.torch_dtype) == (131072, 128256, "bfloat16")


def test_gpt2_spellings_and_mha_default() -> None:
    c = parse_config(cfg({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768,
                          "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257}))
    # no num_key_value_heads: multi-head attention, kv heads = heads = 12; head dim 768 / 12 = 64
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.context_length) == (12, 12, 12, 64, 1024)


def test_multimodal_reads_text_config_and_moe_mla_fields() -> None:
    c = parse_config(cfg({
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
        "quantization_config": {"quant_method": "fp8"},
        "text_config": {"hidden_size": 5120, "num_attention_heads": 40, "num_key_value_heads": 8,
                        "head_dim": 128, "num_hidden_layers": 48, "num_local_experts": 16,
                        "num_experts_per_tok": 1, "kv_lora_rank": 0},
    }))
    assert (c.n_layers, c.head_dim, c.n_experts, c.n_experts_used, c.quant_method) == (48, 128, 16, 1, "fp8")


@pytest.mark.parametrize("raw, message", [(b"{", "not valid JSON"), (b"[]", "not a JSON object"),
                                          (b"{}", "neither")])
def test_bad_configs(raw: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


@pytest.mark.parametrize(
    "doc, repo, files, category",
    [
        (LLAMA_70B, "meta-llama/Llama-3.1-70B", (), "llm"),
        ({"architectures": ["BertModel"], "model_type": "bert"}, "BAAI/bge-small", (), "embedding"),
        ({"architectures": ["XLMRobertaModel"]}, "x/y", ("modules.json",), "embedding"),
        ({"architectures": ["XLMRobertaForSequenceClassification"]}, "BAAI/bge-reranker-v2-m3", (), "reranker"),
        ({"architectures": ["WhisperForConditionalGeneration"]}, "openai/whisper-small", (), "speech-to-text"),
        ({"model_type": "bark"}, "suno/bark", (), "text-to-speech"),
        ({"architectures": ["Qwen3ForCausalLM"]}, "Qwen/Qwen3-Embedding-0.6B", (), "embedding"),
    ],
)
def test_category(doc: dict[str, object], repo: str, files: tuple[str, ...], category: str) -> None:
    assert category_from_config(parse_config(cfg(doc)), repo, files) == category


@pytest.mark.parametrize(
    "arch, repo, pooling, category",
    [("llama", "x/Llama-GGUF", None, "llm"), ("bert", "x/bge-GGUF", None, "embedding"),
     ("qwen3", "x/Qwen3-Reranker-GGUF", None, "reranker"), ("bert", "x/y", 4, "reranker")],
)
def test_gguf_category(arch: str, repo: str, pooling: int | None, category: str) -> None:
    assert category_from_gguf(arch, repo, pooling) == category


def test_diffusers_pipeline() -> None:
    assert diffusers_pipeline(b'{"_class_name": "StableDiffusionXLPipeline"}') == "StableDiffusionXLPipeline"
    with pytest.raises(ConfigError, match="_class_name"):
        diffusers_pipeline(b"{}")
