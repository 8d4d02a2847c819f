"""Which layers of a GGUF model llama.cpp runs with a sliding window, and how wide it is.

Read from the pinned llama.cpp (b11434, ``src/models/<arch>.cpp``,
``load_arch_hparams``): whether an architecture uses a sliding window is llama.cpp's
decision, not the GGUF's. Some GGUFs carry an ``<arch>.attention.sliding_window``
key that llama.cpp ignores for their architecture (phi3 disables it, qwen2/mistral
never read it; exaone4 only for its 64-layer model), some architectures use a window
that the key does not give (gemma2: 4096 when absent; smallthinker and llama4 fix it
whatever the key says).

The layer pattern is ``llama_model_base::load_swa_pattern`` (``src/llama-model.cpp``):
a per-layer ``<arch>.attention.sliding_window_pattern`` array wins; else that key as
an integer n (or the architecture's default) goes to
``llama_hparams::set_swa_pattern(n, dense_first)`` (``src/llama-hparams.cpp:8``):
layer il slides iff ``n == 0 or il % n < n - 1`` (``dense_first``: ``il % n != 0``).
So n = 1 means *no* layer slides, n = 0 every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: When the architecture uses the window: always; only when the key is present and > 0;
#: unless the key is present and 0 (llama4); only for some block counts (exaone4: 64).
When = Literal["always", "key>0", "unless key=0", "64 layers"]


@dataclass(frozen=True)
class SwaRule:
    when: When
    pattern: int | None  # default for set_swa_pattern; None: the per-layer array is required
    dense_first: bool = False
    default_window: int = 0  # used when the key is absent
    forced_window: int = 0  # replaces whatever the key says
    source: str = ""  # file:line in llama.cpp b11434


#: Architectures whose llama.cpp graph uses a sliding-window KV cache (llama_kv_cache_iswa).
#: Every other architecture reading a GGUF with a window key ignores it.
SWA_RULES: dict[str, SwaRule] = {
    "gemma2": SwaRule("always", 2, default_window=4096, source="src/models/gemma2.cpp:4-12"),
    "gemma3": SwaRule("key>0", 6, source="src/models/gemma3.cpp:4-11"),
    "gemma3n": SwaRule("always", 5, source="src/models/gemma3n.cpp:4-11"),
    "gemma4": SwaRule("always", None, source="src/models/gemma4.cpp:5-16"),
    "cohere2": SwaRule("always", 4, source="src/models/cohere2.cpp:4-11"),
    "cohere2moe": SwaRule("always", 4, dense_first=True, source="src/models/cohere2moe.cpp:13-28"),
    "gpt-oss": SwaRule("always", 2, source="src/models/openai-moe.cpp:6-9"),
    "exaone4": SwaRule("64 layers", 4, default_window=4096, source="src/models/exaone4.cpp:4-14"),
    "exaone-moe": SwaRule("always", 4, default_window=128, source="src/models/exaone-moe.cpp:4-11"),
    "olmo2": SwaRule("key>0", 4, source="src/models/olmo2.cpp:6-15"),
    "afmoe": SwaRule("key>0", 4, source="src/models/afmoe.cpp:11-23"),
    "mellum": SwaRule("key>0", 4, source="src/models/mellum.cpp:6-18"),
    "laguna": SwaRule("key>0", 4, dense_first=True, source="src/models/laguna.cpp:34-39"),
    "plamo3": SwaRule("key>0", 8, source="src/models/plamo3.cpp:5-11"),
    "smallthinker": SwaRule("key>0", 4, dense_first=True, forced_window=4096,
                            source="src/models/smallthinker.cpp:4-15"),
    "llama4": SwaRule("unless key=0", 4, forced_window=8192, source="src/models/llama4.cpp:8-19 (chunked)"),
    "muse-glimmer": SwaRule("always", 4, source="src/models/muse-glimmer.cpp:5-13"),
    "maple": SwaRule("always", None, source="src/models/maple.cpp:4-10"),
    "mimo2": SwaRule("always", None, source="src/models/mimo2.cpp:6-12"),
    "spark2_5": SwaRule("always", None, source="src/models/spark2-5.cpp:5-8"),
    "step35": SwaRule("always", None, source="src/models/step35.cpp:6-26"),
    "granite_swa": SwaRule("always", None, source="src/models/granite-swa.cpp:17-19"),
    "dots3note": SwaRule("always", None, source="src/models/dots3note.cpp:31-34"),
}

#: Architectures that read the window key and then do not use it (examples for the docs and tests).
SWA_IGNORED: dict[str, str] = {
    "phi3": "src/models/phi3.cpp:13-23: 'Phi SWA is currently disabled', swa_type NONE",
}


def pattern_layers(n_layers: int, n: int, dense_first: bool) -> list[bool]:
    """``llama_hparams::set_swa_pattern``: which layers slide for pattern n."""
    if dense_first:
        return [n == 0 or il % n != 0 for il in range(n_layers)]
    return [n == 0 or il % n < n - 1 for il in range(n_layers)]


def sliding_window(arch: str, n_layers: int, key_window: int | None, pattern: object) -> tuple[int, list[bool]]:
    """(window in tokens, which layers use it) as llama.cpp b11434 decides for this GGUF;
    (0, []) when the architecture runs without a sliding window."""
    rule = SWA_RULES.get(arch)
    if rule is None:
        return 0, []
    present = key_window is not None
    if rule.when == "key>0" and not (present and key_window > 0):  # type: ignore[operator]
        return 0, []
    if rule.when == "unless key=0" and present and key_window == 0:
        return 0, []
    if rule.when == "64 layers" and n_layers != 64:
        return 0, []
    window = rule.forced_window or (key_window if present else rule.default_window)
    if isinstance(pattern, list) and len(pattern) >= n_layers:
        return int(window or 0), [bool(p) for p in pattern[:n_layers]]
    n = pattern if isinstance(pattern, int) and not isinstance(pattern, bool) else rule.pattern
    if n is None:  # the architecture requires the per-layer array and the GGUF lacks it
        return 0, []
    return int(window or 0), pattern_layers(n_layers, n, rule.dense_first)
