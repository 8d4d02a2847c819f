"""The estimate as stored with a deployment and returned by the API."""

from __future__ import annotations

from pydantic import BaseModel


class ResourceEstimate(BaseModel):
    """Memory one instance needs, in bytes. `known=False` means it could not be
    computed (the reason says why) and placement must not trust the numbers."""

    known: bool = True
    reason: str | None = None
    gpu_vram: int = 0  # VRAM on one GPU when fully offloaded
    gpu_ram: int = 0  # host RAM needed alongside a GPU placement
    cpu_ram: int = 0  # host RAM when running on CPU only
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    context_size: int = 0

    @classmethod
    def unknown(cls, reason: str) -> ResourceEstimate:
        return cls(known=False, reason=reason)
