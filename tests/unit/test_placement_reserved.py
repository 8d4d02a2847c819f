"""Reserved memory a node declares (parsed by the node, left free by placement)."""

from __future__ import annotations

import pytest

from gpufleet.node.inventory import VirtualGpuError, parse_size

GiB = 1 << 30


@pytest.mark.parametrize(("text", "size"), [
    ("2G", 2 * GiB),  # 2 × 2^30
    ("2GiB", 2 * GiB),
    ("512M", 512 << 20),  # 512 × 2^20
    ("1.5g", 3 * GiB // 2),  # 1.5 × 2^30
    ("0", 0),
    ("1T", 1 << 40),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "two", "-1G", "1X", "G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(VirtualGpuError, match="use a number with K, M, G or T"):
        parse_size(text, "--reserved-ram")
