"""Which backend serves a model (pure).

GGUF is llama.cpp's format, so GGUF → llama.cpp (llama-box is the same engine
with GPUStack's extras; users pick it explicitly). Safetensors checkpoints of
LLMs, embedding and reranker models → vLLM. Audio models → vox-box (GPUStack's
speech server). Diffusers pipelines have no backend in gpufleet yet: that is an
error, not a silent pick.
"""

from __future__ import annotations

from gpufleet.core.metadata import Category, ModelFormat

BACKENDS = ("llama.cpp", "llama-box", "vllm", "vox-box")
_AUDIO: tuple[str, ...] = ("speech-to-text", "text-to-speech")


class NoBackend(ValueError):
    """No backend can serve this model as described; the message says what would."""


def choose_backend(fmt: ModelFormat, category: Category, requested: str | None = None) -> str:
    """The backend for a model of this format and category; `requested` overrides
    when that backend can read the format."""
    if requested is not None:
        if requested not in BACKENDS:
            raise NoBackend(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
        if fmt == "gguf" and requested not in ("llama.cpp", "llama-box"):
            raise NoBackend(f"{requested} cannot serve GGUF files; use llama.cpp or llama-box")
        if fmt == "safetensors" and requested in ("llama.cpp", "llama-box"):
            raise NoBackend(f"{requested} needs a GGUF file; deploy a GGUF variant or use vllm")
        return requested
    if fmt == "gguf":
        return "llama.cpp"
    if category in _AUDIO:
        return "vox-box"
    if category == "image":
        raise NoBackend("image (diffusers) models have no backend in gpufleet yet")
    return "vllm"
