from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufleet.node.inventory import VirtualGpuError, detect_nvidia_gpus, parse_virtual_gpus

GiB = 1 << 30


@pytest.mark.parametrize(
    ("spec", "names", "memory"),
    [
        ("A100-80G:2", ["A100-80G", "A100-80G"], [80 * GiB] * 2),
        ("RTX4090-24G:1,T4-16G:1", ["RTX4090-24G", "T4-16G"], [24 * GiB, 16 * GiB]),
        ("T4-0.5G:1", ["T4-0.5G"], [GiB // 2]),
    ],
)
def test_short_spec(spec: str, names: list[str], memory: list[int]) -> None:
    gpus = parse_virtual_gpus(spec)
    assert [g.name for g in gpus] == names
    assert [g.memory_total for g in gpus] == memory
    assert [g.index for g in gpus] == list(range(len(names)))
    assert all(g.virtual for g in gpus)


def test_json_file(tmp_path: Path) -> None:
    f = tmp_path / "gpus.json"
    f.write_text(json.dumps([{"name": "H100", "memory_gib": 80, "count": 3}]))
    gpus = parse_virtual_gpus(str(f), first_index=2)
    assert [g.index for g in gpus] == [2, 3, 4]


@pytest.mark.parametrize("spec", ["A100:2", "A100-80G", "A100-80G:x", "-80G:1"])
def test_bad_spec(spec: str) -> None:
    with pytest.raises(VirtualGpuError, match="invalid virtual GPU spec"):
        parse_virtual_gpus(spec)


def test_bad_json(tmp_path: Path) -> None:
    f = tmp_path / "gpus.json"
    f.write_text('[{"name": "x", "memory_gib": -1}]')
    with pytest.raises(VirtualGpuError, match="is invalid"):
        parse_virtual_gpus(str(f))


def test_machine_without_nvidia_is_a_cpu_node() -> None:
    # This machine has no NVIDIA library; detection must return no GPUs, not raise.
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert detect_nvidia_gpus() == []
    else:  # pragma: no cover - on a GPU machine, detection finds them
        pynvml.nvmlShutdown()
        assert len(detect_nvidia_gpus()) >= 1
