"""The llama-server settings that change memory, read from ``--backend-param`` values.

Defaults are those of current llama.cpp's ``common_params`` (checked against the
xllamacpp 2026.10 build gpufleet runs: its ``CommonParams()`` and its load log):
``--batch-size 2048``, ``--ubatch-size 512``, ``--parallel 1`` (this build's
default; ``llama_context: n_seq_max = 1``. Upstream ``llama-server`` defaults to
``-np -1`` = auto, 4 slots sharing one unified KV cache (llama.cpp PR #16736):
the KV cache and the attention mask are then those of one slot and only the
logits buffer is 4x, ``n_vocab x 16`` bytes, 2 MiB at 128k tokens), ``--flash-attn auto`` (enabled
wherever the device supports it, which the CPU and CUDA backends do),
``--cache-type-k/-v f16``, mmap on, KV offloaded with its layer, weights
repacked for the CPU where the CPU supports it, per-sequence (not unified) KV
streams, ``--swa-full`` off. The context size is gpufleet's: when the user gives
none, gpufleet launches ``--ctx-size min(4096, training context)``
(:func:`gpufleet.core.backends.llama_cpp.build_launch`), and ``0`` means the
training context, as in llama.cpp.

Flags that do not change memory are ignored here; their validation belongs to
:mod:`gpufleet.core.backends.llama_cpp`. A value that cannot be read raises
:class:`EstimateInputError` saying which flag and what is expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from gpufleet.core.backends.params import BackendParamError, parse_param

DEFAULT_CONTEXT = 4096  # llama-server's --ctx-size default before "0 = model's"; gpufleet's cap
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


class EstimateInputError(ValueError):
    """A backend parameter that the estimate needs is malformed; the message says how to fix it."""


@dataclass(frozen=True)
class LlamaConfig:
    """llama-server memory settings; ``None`` means "what gpufleet/llama.cpp picks"."""

    ctx_size: int | None = None
    parallel: int = 1
    batch: int = 2048
    ubatch: int = 512
    cache_k: str = "f16"
    cache_v: str = "f16"
    flash_attn: str = "auto"  # on | off | auto
    kv_offload: bool = True
    mmap: bool = True
    repack: bool = True
    gpu_layers: int | None = None
    tensor_split: tuple[float, ...] | None = None
    split_mode: str = "layer"
    main_gpu: int = 0
    swa_full: bool = False
    kv_unified: bool = False
    embedding: bool = False
    mmproj_offload: bool = True
    rpc_servers: int = 0

    @property
    def flash(self) -> bool:
        """auto resolves to on: both the CPU and CUDA backends support it for
        the standard head sizes (llama.cpp logs "Flash Attention enabled")."""
        return self.flash_attn != "off"


def _int(flag: str, value: str | None, minimum: int = 0) -> int:
    if value is None or not value.lstrip("-").isdigit() or int(value) < minimum:
        raise EstimateInputError(f"{flag} needs an integer >= {minimum}, got {value!r}")
    return int(value)


def _cache_type(flag: str, value: str | None) -> str:
    v = (value or "").lower()
    if v not in KV_CACHE_TYPES:
        raise EstimateInputError(f"{flag} must be one of {', '.join(KV_CACHE_TYPES)}, got {value!r}")
    return v


def _split(flag: str, value: str | None) -> tuple[float, ...]:
    try:
        parts = tuple(float(p) for p in (value or "").replace("/", ",").split(",") if p != "")
    except ValueError:
        parts = ()
    if not parts or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise EstimateInputError(f"{flag} needs non-negative proportions like 3,1, got {value!r}")
    return parts


def _flash(value: str | None) -> str:
    v = "on" if value is None else value.lower()
    v = {"1": "on", "true": "on", "enabled": "on", "0": "off", "false": "off", "disabled": "off"}.get(v, v)
    if v not in ("on", "off", "auto"):
        raise EstimateInputError(f"--flash-attn takes on, off or auto, got {value!r}")
    return v


def _gpu_layers(flag: str, value: str | None) -> int:
    if value in ("all", "auto"):
        return 10**6  # clamps to every layer plus the output layer
    return _int(flag, value)


_INT_FLAGS = {
    "-c": "ctx_size", "--ctx-size": "ctx_size",
    "-np": "parallel", "--parallel": "parallel",
    "-b": "batch", "--batch-size": "batch",
    "-ub": "ubatch", "--ubatch-size": "ubatch",
    "-mg": "main_gpu", "--main-gpu": "main_gpu",
}
_MINIMUM = {"parallel": 1, "batch": 1, "ubatch": 1}
_SWITCHES = {
    "-nkvo": ("kv_offload", False), "--no-kv-offload": ("kv_offload", False),
    "--no-mmap": ("mmap", False), "--mmap": ("mmap", True),
    "-nr": ("repack", False), "--no-repack": ("repack", False),
    "--swa-full": ("swa_full", True),
    "-kvu": ("kv_unified", True), "--kv-unified": ("kv_unified", True),
    "--embedding": ("embedding", True), "--embeddings": ("embedding", True),
    "--reranking": ("embedding", True), "--rerank": ("embedding", True),
    "--no-mmproj-offload": ("mmproj_offload", False),
}


def _apply(fields: dict[str, object], flag: str, value: str | None) -> None:
    if flag in _INT_FLAGS:
        name = _INT_FLAGS[flag]
        fields[name] = _int(flag, value, _MINIMUM.get(name, 0))
    elif flag in _SWITCHES:
        name, on = _SWITCHES[flag]
        fields[name] = on
    elif flag in ("-ctk", "--cache-type-k"):
        fields["cache_k"] = _cache_type(flag, value)
    elif flag in ("-ctv", "--cache-type-v"):
        fields["cache_v"] = _cache_type(flag, value)
    elif flag in ("-fa", "--flash-attn"):
        fields["flash_attn"] = _flash(value)
    elif flag in ("-ngl", "--n-gpu-layers", "--gpu-layers"):
        fields["gpu_layers"] = _gpu_layers(flag, value)
    elif flag in ("-ts", "--tensor-split"):
        fields["tensor_split"] = _split(flag, value)
    elif flag in ("-sm", "--split-mode"):
        if value not in ("none", "layer", "row"):
            raise EstimateInputError(f"--split-mode takes none, layer or row, got {value!r}")
        fields["split_mode"] = value
    elif flag == "--rpc":
        fields["rpc_servers"] = len([s for s in (value or "").split(",") if s.strip()])


@lru_cache(maxsize=1024)
def parse_llama_params(params: tuple[str, ...]) -> LlamaConfig:
    """Memory-relevant settings from ``--backend-param`` strings (last one wins, as in llama.cpp).

    Cached: placement re-estimates the same deployment under many device
    splits, and the parameters do not change between those calls."""
    fields: dict[str, object] = {}
    for raw in params:
        try:
            p = parse_param(raw)
        except BackendParamError as exc:
            raise EstimateInputError(str(exc)) from exc
        _apply(fields, p.flag, p.value)
    return LlamaConfig(**fields)  # type: ignore[arg-type]
