"""Local paths: a GGUF file (or the first shard of a split one), or a model
directory (one GGUF model, or a safetensors checkpoint with its config.json).

Reads are bounded: a first window of the header, then only what the parser
says it needs (see :mod:`gpufleet.sources.headers`), never tensor data.
"""

from __future__ import annotations

from pathlib import Path

from gpufleet.core.schemas import ModelMetadata, ModelSource
from gpufleet.sources.errors import ModelNotVisible, ModelSourceError

__all__ = ["ModelNotVisible", "ModelSourceError", "read_local_metadata", "resolve_gguf_path"]


def resolve_gguf_path(path: str) -> Path:
    """The file a llama.cpp backend is pointed at for this local path: the path
    itself, or the chosen GGUF (first shard) inside a directory."""
    from gpufleet.sources.resolve import choose_files, open_store

    p = Path(path).expanduser()
    store, pattern = open_store(ModelSource(kind="local_path", local_path=str(p)))
    choice = choose_files(store, pattern)
    if choice.format != "gguf":
        return p
    return (p if p.is_dir() else p.parent) / choice.entry


def read_local_metadata(path: str) -> tuple[Path, ModelMetadata]:
    from gpufleet.sources.resolve import resolve

    choice, meta = resolve(ModelSource(kind="local_path", local_path=str(Path(path).expanduser())))
    p = Path(path).expanduser()
    base = p if p.is_dir() else p.parent
    return (base / choice.entry if choice.format == "gguf" else p), meta
