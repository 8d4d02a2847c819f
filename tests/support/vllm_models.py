"""Tiny random-weight safetensors models that a real vLLM serves on CPU in seconds.

gpufleet's project environment has no torch, and transformers lives in the engine's own
environment, so the checkpoints are written by *that* environment's interpreter running this
file as a script (`<env>/bin/python tests/support/vllm_models.py chat|embedding DEST`). The
host-side functions below only start it; the writer functions import torch and transformers
inside themselves, so importing this module needs the standard library only.

Both models share a byte-level tokenizer built in code (256 byte tokens + a few specials, no
merges): any text encodes, nothing is downloaded. Weights come from a fixed seed, so a
greedy (temperature 0) answer is the same on every run.

- ``chat``: `LlamaForCausalLM`, 2 layers, hidden 128, 4 heads (2 KV heads), so head_dim is 32 —
  vLLM's CPU attention supports head sizes 32..512 only, so hidden 64 with 4 heads (head_dim 16)
  would be refused; with a chat template, for `/v1/chat/completions`.
- ``embedding``: `BertModel` (vLLM serves it as an encoder-only embedding model with CLS
  pooling on CPU), 2 layers, hidden 64, 2 heads: `/v1/embeddings` vectors of length 64.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SEED = 0
CHAT_HIDDEN = 128
EMBEDDING_HIDDEN = 64
MAX_POSITIONS = 512
WRITE_TIMEOUT_S = 600  # a cold first import of torch + transformers on 2 cores takes ~1 min

_SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "[CLS]", "[SEP]",
             "[UNK]", "[MASK]"]
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}"
    "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny_chat_model(python: Path, dest: Path) -> Path:
    """The tiny Llama chat model under ``dest``, written by the engine environment's ``python``."""
    return _write(python, "chat", dest)


def write_tiny_embedding_model(python: Path, dest: Path) -> Path:
    """The tiny BERT embedding model under ``dest``, written by the engine environment's ``python``."""
    return _write(python, "embedding", dest)


def _write(python: Path, kind: str, dest: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"  # everything is built in code; a download attempt is a bug
    result = subprocess.run([str(python), str(Path(__file__).resolve()), kind, str(dest)], capture_output=True,
                            text=True, env=env, stdin=subprocess.DEVNULL, timeout=WRITE_TIMEOUT_S)
    if result.returncode != 0 or not (dest / "config.json").is_file():
        raise RuntimeError(f"writing the tiny {kind} model with {python} failed (exit {result.returncode}):\n"
                           + "\n".join((result.stdout + result.stderr).splitlines()[-30:]))
    return dest


# ---- run inside the engine environment -------------------------------------------------------

def _tokenizer(bert: bool):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*_SPECIALS, *alphabet])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(_SPECIALS)
    if bert:
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=core, cls_token="[CLS]", sep_token="[SEP]",
                                       pad_token="<|pad|>", unk_token="[UNK]", mask_token="[MASK]",
                                       model_max_length=MAX_POSITIONS)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>",
                                  pad_token="<|pad|>", unk_token="[UNK]", model_max_length=MAX_POSITIONS)
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def _write_chat(dest: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    tok = _tokenizer(bert=False)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=CHAT_HIDDEN, intermediate_size=2 * CHAT_HIDDEN, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.do_sample = False  # vLLM takes defaults from here: greedy
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)


def _write_embedding(dest: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    tok = _tokenizer(bert=True)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=EMBEDDING_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * EMBEDDING_HIDDEN, max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tok.pad_token_id,
    )
    model = BertModel(config, add_pooling_layer=False).to(torch.float32)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)


if __name__ == "__main__":
    kind, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    {"chat": _write_chat, "embedding": _write_embedding}[kind](out)
    print(f"wrote {kind} model to {out}")
