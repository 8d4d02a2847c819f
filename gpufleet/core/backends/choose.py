"""Which backend serves a model (pure).

GGUF is llama.cpp's format, so GGUF → llama.cpp (llama-box is the same engine
with GPUStack's extras; users pick it explicitly). Safetensors checkpoints of
LLMs, embedding and reranker models → vLLM. Audio models, and CTranslate2
directories (faster-whisper's format) → vox-box (GPUStack's speech server). Diffusers pipelines have no backend in gpufleet yet: that is an
error, not a silent pick.
"""

from __future__ import annotations

from gpufleet.core.backends.registry import ENGINE_NAMES, ENGINES
from gpufleet.core.metadata import Category, ModelFormat

BACKENDS = ENGINE_NAMES
_AUDIO: tuple[str, ...] = ("speech-to-text", "text-to-speech")


class NoBackend(ValueError):
    """No backend can serve this model as described; the message says what would."""


def choose_backend(fmt: ModelFormat, category: Category, requested: str | None = None) -> str:
    """The backend for a model of this format and category; `requested` overrides
    when that backend can read the format."""
    if requested is not None:
        if requested not in BACKENDS:
            raise NoBackend(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
        if fmt not in ENGINES[requested].formats:
            readers = [n for n, e in ENGINES.items() if fmt in e.formats]
            if fmt == "gguf":
                raise NoBackend(f"{requested} cannot serve GGUF files; use {' or '.join(readers)}")
            if "gguf" not in ENGINES[requested].formats:
                raise NoBackend(f"{requested} cannot serve {fmt} models; use {' or '.join(readers)}")
            raise NoBackend(f"{requested} needs a GGUF file; deploy a GGUF variant or use {' or '.join(readers)}")
        return requested
    if fmt == "gguf":
        return "llama.cpp"
    if fmt == "ctranslate2" or category in _AUDIO:
        return "vox-box"
    if category == "image":
        raise NoBackend("image (diffusers) models have no backend in gpufleet yet")
    return "vllm"
