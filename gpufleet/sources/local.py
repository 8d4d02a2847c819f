"""Model metadata from a local path, reading only the GGUF header.

The header is read in growing windows (1 MiB, then whatever the parser says it
needs), so a 70 GB file costs a few MiB of reads, never its tensor data.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpufleet.core.gguf import GGUFError, GGUFHeader, GGUFTruncated, parse_gguf_header
from gpufleet.core.model_metadata import metadata_from_gguf
from gpufleet.core.schemas import ModelMetadata

FIRST_WINDOW = 1 << 20


class ModelSourceError(ValueError):
    """The model cannot be read; the message names the path and the problem."""


def resolve_gguf_path(path: str) -> Path:
    """A GGUF file, or a directory holding exactly one (first shard of a split model)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelSourceError(f"model path {path} not found")
    if p.is_dir():
        ggufs = sorted(f for f in p.glob("*.gguf") if "mmproj" not in f.name.lower())
        if not ggufs:
            raise ModelSourceError(f"model directory {path} holds no .gguf file")
        firsts = [f for f in ggufs if "-00001-of-" in f.name] or ggufs
        if len(firsts) > 1:
            names = ", ".join(f.name for f in firsts)
            raise ModelSourceError(
                f"model directory {path} holds several GGUF files ({names}); pass one file"
            )
        return firsts[0]
    return p


def read_gguf_header(path: Path) -> GGUFHeader:
    size = path.stat().st_size
    want = min(FIRST_WINDOW, size)
    try:
        with path.open("rb") as f:
            while True:
                f.seek(0)
                buf = f.read(want)
                try:
                    return parse_gguf_header(buf, file_size=size)
                except GGUFTruncated as exc:
                    if want >= size:
                        raise GGUFError(f"header ends beyond end of file ({size} bytes)") from exc
                    want = min(size, max(exc.needed, want * 2))
    except PermissionError as exc:
        raise ModelSourceError(f"model path {path} is not readable: {exc.strerror}") from exc
    except GGUFError as exc:
        raise ModelSourceError(f"{path} is not a valid GGUF file: {exc}") from exc


def read_local_metadata(path: str) -> tuple[Path, ModelMetadata]:
    gguf_path = resolve_gguf_path(path)
    if not os.access(gguf_path, os.R_OK):
        raise ModelSourceError(f"model path {gguf_path} is not readable")
    header = read_gguf_header(gguf_path)
    try:
        return gguf_path, metadata_from_gguf(header, gguf_path.stat().st_size)
    except ValueError as exc:
        raise ModelSourceError(f"{gguf_path}: {exc}") from exc
