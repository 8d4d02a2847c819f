"""Architectures and flag sets the estimate is checked on against llama-server b11434 (CPU).

Each case names the llama.cpp rule it exercises (``docs/estimation.md`` has the table with
the source lines). Models are tens of MB, written sparse by :mod:`tests.support.arch_models`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.arch_models import F16, F32, Q4_0, Q4_K, Q6_K, Q8_0, ArchModel


@dataclass(frozen=True)
class ArchCase:
    name: str
    model: ArchModel
    params: tuple[str, ...]
    rule: str


ARCH_CASES: tuple[ArchCase, ...] = (
    ArchCase("llama-f16", ArchModel("llama", 4, 512, 8, 8, n_ff=1408, context=4096), ("--ctx-size=2048",),
             "dense baseline"),
    ArchCase("gemma2-swa", ArchModel("gemma2", 4, 512, 8, 4, n_ff=1408, context=8192, tied=True,
                                     keys={"attention.sliding_window": 512}), ("--ctx-size=4096",),
             "gemma2 slides every other layer: pad256(min(4096, 512 + 512)) = 1024 cells; second KQ mask"),
    ArchCase("gemma2-no-key", ArchModel("gemma2", 4, 512, 8, 4, n_ff=1408, context=8192, tied=True),
             ("--ctx-size=8192",), "gemma2 without the key: llama.cpp's default window 4096"),
    ArchCase("gemma3-swa-pattern6", ArchModel("gemma3", 7, 512, 8, 4, n_ff=1408, context=8192, tied=True,
                                              keys={"attention.sliding_window": 256}),
             ("--ctx-size=8192", "--parallel=2"),
             "gemma3: 5 of 6 layers slide; 2 streams of 4096, window 256 + 512 -> 768 cells each"),
    ArchCase("gemma3-no-key", ArchModel("gemma3", 4, 512, 8, 4, n_ff=1408, context=8192, tied=True),
             ("--ctx-size=4096",), "gemma3 without the key: no sliding window at all"),
    ArchCase("phi3-key-ignored", ArchModel("phi3", 4, 512, 8, 8, n_ff=1408, context=4096,
                                           keys={"attention.sliding_window": 256}), ("--ctx-size=4096",),
             "phi3 reads sliding_window and disables it: full KV on every layer; fused QKV"),
    ArchCase("qwen2-key-ignored", ArchModel("qwen2", 4, 512, 8, 2, n_ff=1408, context=8192,
                                            keys={"attention.sliding_window": 1024}), ("--ctx-size=8192",),
             "qwen2 never reads sliding_window"),
    ArchCase("qwen3moe-q8_0", ArchModel("qwen3moe", 4, 512, 8, 4, head_dim=128, n_ff=1408, context=4096,
                                        matrix=Q8_0, n_expert=16, n_expert_used=4, n_ff_exp=256),
             ("--ctx-size=4096",), "mixture of experts (16 experts, 4 used), Q8_0 (not repacked on x86)"),
    ArchCase("qwen3-q4_0-repack", ArchModel("qwen3", 4, 1024, 16, 4, n_ff=2816, context=4096, matrix=Q4_0,
                                            output=Q6_K, roles={"ffn_down": Q8_0}),
             ("--ctx-size=2048",), "CPU repack per tensor: Q4_0 matrices repacked, Q8_0 down and Q6_K output not"),
    ArchCase("llama-q4_k-mix", ArchModel("llama", 4, 1024, 16, 4, n_ff=2816, context=4096, matrix=Q4_K,
                                         embed=Q4_K, output=Q6_K, roles={"ffn_down": Q6_K, "attn_v": Q6_K}),
             ("--ctx-size=2048",), "Q4_K_M-style mix: Q4_K repacked (rows % 8 == 0), Q6_K kept"),
    ArchCase("llama-q4_0-odd-rows", ArchModel("llama", 4, 512, 8, 8, n_ff=1412, context=4096, matrix=Q4_0,
                                              roles={"ffn_down": F16}),
             ("--ctx-size=2048",), "Q4_0 gate/up with 1412 rows (not a multiple of 8): not repacked"),
    ArchCase("llama-tied-q4_0", ArchModel("llama", 4, 512, 8, 8, n_ff=1408, context=4096, matrix=Q4_0,
                                          tied=True), ("--ctx-size=2048",),
             "tied output on the CPU: the embedding is not repacked, its output duplicate is"),
    ArchCase("ctx0-parallel4", ArchModel("llama", 4, 512, 8, 4, n_ff=1408, context=2048),
             ("--ctx-size=0", "--parallel=4"), "--ctx-size 0 --parallel 4: fit gives each stream 2048 (8192 cells)"),
    ArchCase("ctx0-parallel3-unified", ArchModel("llama", 4, 512, 8, 4, n_ff=1408, context=2048),
             ("--ctx-size=0", "--parallel=3", "--kv-unified"), "--ctx-size 0 with --kv-unified: one stream of 2048"),
    ArchCase("large-vocab-128k", ArchModel("llama", 2, 512, 8, 8, n_ff=1408, context=4096, n_vocab=128256),
             ("--ctx-size=4096",), "128k vocabulary: logits, output buffer, tokenizer"),
    ArchCase("gemma2-swa-fa-off", ArchModel("gemma2", 4, 512, 8, 4, n_ff=1408, context=8192, tied=True,
                                            keys={"attention.sliding_window": 512}),
             ("--ctx-size=4096", "--flash-attn=off"), "flash attention off: f32 masks and the KQ matrix"),
    ArchCase("llama-f32-ctx-pad", ArchModel("llama", 2, 256, 4, 4, n_ff=512, context=8192, matrix=F32),
             ("--ctx-size=4097", "--parallel=2"), "n_ctx padded before the split: pad(4352 / 2) = 2304 per stream"),
    ArchCase("gemma2-swa-full", ArchModel("gemma2", 4, 512, 8, 4, n_ff=1408, context=8192, tied=True,
                                          keys={"attention.sliding_window": 512}),
             ("--ctx-size=4096", "--swa-full"), "--swa-full: window layers keep the whole context"),
)

