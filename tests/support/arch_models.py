"""Loadable GGUF models of several llama.cpp architectures, for accuracy tests.

The tensor sets are those each architecture's ``load_arch_tensors`` requires in
llama.cpp b11434 (``src/models/<arch>.cpp``): llama/qwen2/mistral-style dense blocks,
qwen3's Q/K norms, gemma2/gemma3's post-norms, qwen3moe's expert tensors, phi3's fused
QKV and gate-up. All tensor data is zero and the file is written sparse (header, then
a truncate), so a 100 MB model costs no disk and no time; llama.cpp still maps, reads,
repacks and computes with every byte. The vocabulary is the demo model's SPM one
(:func:`gpufleet.demo.tiny_model.build_vocab`) padded to ``n_vocab``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.demo.tiny_model import CHATML_TEMPLATE, build_vocab
from tests.support.synthetic_models import gguf_header

F32, F16, Q4_0, Q8_0, Q2_K, Q4_K, Q6_K = 0, 1, 2, 8, 10, 12, 14
FILE_TYPES = {F32: 0, F16: 1, Q4_0: 2, Q8_0: 7, Q2_K: 10, Q4_K: 15, Q6_K: 18}


@dataclass(frozen=True)
class ArchModel:
    """Shape of one generated model. ``matrix``: ggml type of the block matrices;
    ``embed``/``output``: of the token embedding and output projection (None: like ``matrix``)."""

    arch: str = "llama"
    n_layers: int = 4
    n_embd: int = 512
    n_head: int = 8
    n_head_kv: int = 8
    head_dim: int = 0  # 0: n_embd / n_head
    n_ff: int = 1408
    context: int = 4096
    n_vocab: int = 32000
    matrix: int = F16
    embed: int | None = None
    output: int | None = None
    tied: bool = False
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    keys: dict[str, object] = field(default_factory=dict)  # extra <arch>.* keys (sliding_window, ...)
    roles: dict[str, int] = field(default_factory=dict)  # ggml type by tensor role ("ffn_down": Q6_K), a mix

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


def tensors(m: ArchModel) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, ggml shape ne[0] first, ggml type) as llama.cpp loads the architecture."""
    e, hd, mt = m.n_embd, m.hd, m.matrix
    q, kv = m.n_head * hd, m.n_head_kv * hd
    out = [("token_embd.weight", (e, m.n_vocab), m.embed if m.embed is not None else mt),
           ("output_norm.weight", (e,), F32)]
    if not m.tied:
        out.append(("output.weight", (e, m.n_vocab), m.output if m.output is not None else mt))
    for i in range(m.n_layers):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", (e,), F32))
        if m.arch == "phi3":
            out.append((b + "attn_qkv.weight", (e, q + 2 * kv), mt))
        else:
            out += [(b + "attn_q.weight", (e, q), mt), (b + "attn_k.weight", (e, kv), mt),
                    (b + "attn_v.weight", (e, kv), mt)]
        out.append((b + "attn_output.weight", (q, e), mt))
        if m.arch in ("qwen3", "qwen3moe", "gemma3"):
            out += [(b + "attn_q_norm.weight", (hd,), F32), (b + "attn_k_norm.weight", (hd,), F32)]
        if m.arch in ("gemma2", "gemma3"):
            out += [(b + "post_attention_norm.weight", (e,), F32), (b + "post_ffw_norm.weight", (e,), F32)]
        out.append((b + "ffn_norm.weight", (e,), F32))
        if m.n_expert:
            out += [(b + "ffn_gate_inp.weight", (e, m.n_expert), F32),
                    (b + "ffn_gate_exps.weight", (e, m.n_ff_exp, m.n_expert), mt),
                    (b + "ffn_up_exps.weight", (e, m.n_ff_exp, m.n_expert), mt),
                    (b + "ffn_down_exps.weight", (m.n_ff_exp, e, m.n_expert), mt)]
        elif m.arch == "phi3":
            out += [(b + "ffn_up.weight", (e, 2 * m.n_ff), mt), (b + "ffn_down.weight", (m.n_ff, e), mt)]
        else:
            out += [(b + "ffn_gate.weight", (e, m.n_ff), mt), (b + "ffn_up.weight", (e, m.n_ff), mt),
                    (b + "ffn_down.weight", (m.n_ff, e), mt)]
    return [(n, shape, _role_type(m, n, t)) for n, shape, t in out]


def _role_type(m: ArchModel, name: str, default: int) -> int:
    role = name.split(".")[-2] if name.startswith("blk.") else ""
    return m.roles.get(role, default)


def metadata(m: ArchModel, name: str) -> dict[str, object]:
    a = m.arch
    vocab = build_vocab(m.n_vocab)
    meta: dict[str, object] = {
        "general.architecture": a, "general.name": name, "general.file_type": FILE_TYPES[m.matrix],
        f"{a}.context_length": m.context, f"{a}.embedding_length": m.n_embd, f"{a}.block_count": m.n_layers,
        f"{a}.feed_forward_length": m.n_ff, f"{a}.attention.head_count": m.n_head,
        f"{a}.attention.head_count_kv": m.n_head_kv, f"{a}.attention.key_length": m.hd,
        f"{a}.attention.value_length": m.hd, f"{a}.rope.dimension_count": m.hd, f"{a}.rope.freq_base": 10000.0,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-6, f"{a}.vocab_size": len(vocab.tokens),
    }
    if m.n_expert:
        meta.update({f"{a}.expert_count": m.n_expert, f"{a}.expert_used_count": m.n_expert_used,
                     f"{a}.expert_feed_forward_length": m.n_ff_exp})
    meta.update({f"{a}.{k}": v for k, v in m.keys.items()})
    meta.update({
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": vocab.tokens,
        "tokenizer.ggml.token_type": vocab.types, "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": CHATML_TEMPLATE,
    })
    return meta


def write_arch_model(path: Path, m: ArchModel, name: str = "arch-model") -> Path:
    """Write the model sparse (all tensor data zero) and return its path."""
    head, data = gguf_header(metadata(m, name), tensors(m))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(len(head) + data)
    return path
