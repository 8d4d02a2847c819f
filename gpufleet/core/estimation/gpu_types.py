"""Named GPU types for "does it fit" questions (``gpufleet estimate --fits H200:2``).

A bare name from :data:`GPU_TYPES` gets the memory **CUDA reports** for the card
(``cudaMemGetInfo`` total, what llama.cpp's ``--list-devices`` prints and what
llama.cpp and vLLM can allocate from), where it has been measured. That is less
than the nominal size: the driver keeps some for itself (H200: NVML total
143,771 MiB, 615 MiB reserved, CUDA sees 143,155 MiB = 139.8 GiB, not "141 GB").
Cards not measured yet keep their nominal GiB and say so in :data:`GPU_SOURCES`;
the ``NAME-<n>G`` spelling (the same syntax as ``gpufleet node --virtual-gpus``)
always means exactly n GiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20

#: Bare card names -> memory in MiB (CUDA-reported where :data:`GPU_SOURCES` says so).
GPU_TYPES: dict[str, int] = {
    "T4": 16 * 1024, "V100": 32 * 1024, "A10": 24 * 1024, "A10G": 24 * 1024, "L4": 24 * 1024,
    "L40": 48 * 1024, "L40S": 48 * 1024, "RTX3090": 24 * 1024, "RTX4090": 24 * 1024, "RTX5090": 32 * 1024,
    "A6000": 48 * 1024, "A100": 80 * 1024,
    "H100": 81_080,  # 79.18 GiB
    "H20": 96 * 1024,
    "H200": 143_155,  # 139.8 GiB
    "B200": 180 * 1024, "MI250X": 128 * 1024, "MI300X": 192 * 1024,
}
#: Where each figure comes from; cards not listed are nominal (the size in the card's name).
GPU_SOURCES: dict[str, str] = {
    "H200": "measured: CUDA total on an H200, driver 580.159.04, CUDA 13.0 (/work/shared/notes/gpu-h200.md)",
    "H100": "vLLM's logged total on an H100 80GB, 79.18 GiB (llm-d/llm-d-benchmark "
            "config_explorer/empirical-vllm-memory-results.md)",
}
_SIZED = re.compile(r"^(?P<name>[A-Za-z0-9_.]+?)-(?P<gib>\d+(\.\d+)?)G(B)?$", re.IGNORECASE)


class GpuTypeError(ValueError):
    """A GPU type spec cannot be read; the message shows the accepted forms."""


@dataclass(frozen=True)
class GpuType:
    name: str
    memory: int  # bytes
    count: int

    @property
    def memories(self) -> tuple[int, ...]:
        return (self.memory,) * self.count


def source_of(name: str) -> str:
    """Where the memory figure of a bare card name comes from."""
    return GPU_SOURCES.get(name.upper(), "nominal: the size the card is sold as, not measured")


def parse_gpu_type(spec: str) -> GpuType:
    """``NAME[:COUNT]`` where NAME is ``A100-80G`` style or a bare name from :data:`GPU_TYPES`."""
    name, _, count_text = spec.strip().partition(":")
    if count_text and not count_text.isdigit() or count_text == "0":
        raise GpuTypeError(f"GPU count in {spec!r} must be a positive integer, e.g. A100-80G:2")
    count = int(count_text) if count_text else 1
    sized = _SIZED.match(name)
    if sized:
        return GpuType(name, int(float(sized["gib"]) * GiB), count)
    for known, mib in GPU_TYPES.items():
        if known.lower() == name.lower():
            return GpuType(known, mib * MiB, count)
    raise GpuTypeError(
        f"unknown GPU type {name!r}: use NAME-<GiB>G (e.g. A100-80G:2, L4-24G) or one of "
        + ", ".join(f"{k} ({v / 1024:.1f} GiB)" for k, v in GPU_TYPES.items())
    )
