"""Named GPU types for "does it fit" questions (``gpufleet estimate --fits A100-80G:2``).

Memory is the card's nominal size in GiB as its name says (A100-80G = 80 GiB),
which is what NVML reports to within 1-2 %. Any ``NAME-<n>G`` spelling is
accepted as n GiB, the same syntax as ``gpufleet node --virtual-gpus``; the
table only adds common cards by their bare names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GiB = 1 << 30

#: Bare card names -> nominal memory in GiB.
GPU_TYPES: dict[str, float] = {
    "T4": 16, "V100": 32, "A10": 24, "A10G": 24, "L4": 24, "L40": 48, "L40S": 48, "RTX3090": 24,
    "RTX4090": 24, "RTX5090": 32, "A6000": 48, "A100": 80, "H100": 80, "H20": 96, "H200": 141,
    "B200": 180, "MI250X": 128, "MI300X": 192,
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


def parse_gpu_type(spec: str) -> GpuType:
    """``NAME[:COUNT]`` where NAME is ``A100-80G`` style or a bare name from :data:`GPU_TYPES`."""
    name, _, count_text = spec.strip().partition(":")
    if count_text and not count_text.isdigit() or count_text == "0":
        raise GpuTypeError(f"GPU count in {spec!r} must be a positive integer, e.g. A100-80G:2")
    count = int(count_text) if count_text else 1
    sized = _SIZED.match(name)
    if sized:
        return GpuType(name, int(float(sized["gib"]) * GiB), count)
    for known, gib in GPU_TYPES.items():
        if known.lower() == name.lower():
            return GpuType(f"{known}-{gib:g}G", int(gib * GiB), count)
    raise GpuTypeError(
        f"unknown GPU type {name!r}: use NAME-<GiB>G (e.g. A100-80G:2, L4-24G) or one of "
        + ", ".join(f"{k} ({v:g} GiB)" for k, v in GPU_TYPES.items())
    )
