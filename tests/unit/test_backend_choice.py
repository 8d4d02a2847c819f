"""Backend per format and category, and which overrides are allowed."""

from __future__ import annotations

import pytest

from gpufleet.core.backends.choose import NoBackend, choose_backend


@pytest.mark.parametrize(
    "fmt, category, requested, backend",
    [
        ("gguf", "llm", None, "llama.cpp"),
        ("gguf", "embedding", None, "llama.cpp"),
        ("gguf", "llm", "llama-box", "llama-box"),
        ("safetensors", "llm", None, "vllm"),
        ("safetensors", "embedding", None, "vllm"),
        ("safetensors", "reranker", None, "vllm"),
        ("safetensors", "speech-to-text", None, "vox-box"),
        ("safetensors", "text-to-speech", None, "vox-box"),
        ("safetensors", "llm", "vox-box", "vox-box"),
    ],
)
def test_choice(fmt: str, category: str, requested: str | None, backend: str) -> None:
    assert choose_backend(fmt, category, requested) == backend  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fmt, category, requested, message",
    [
        ("gguf", "llm", "vllm", "cannot serve GGUF"),
        ("safetensors", "llm", "llama.cpp", "needs a GGUF"),
        ("safetensors", "image", None, "no backend"),
        ("gguf", "llm", "ollama", "unknown backend"),
    ],
)
def test_refusals(fmt: str, category: str, requested: str | None, message: str) -> None:
    with pytest.raises(NoBackend, match=message):
        choose_backend(fmt, category, requested)  # type: ignore[arg-type]
