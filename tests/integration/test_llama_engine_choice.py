"""A GPU placement never runs on a CPU-only llama.cpp: the node asks each llama.cpp server
it has which devices it can drive, and refuses (with the fix) what none of them can.

The servers are real (the xllamacpp wheel's launcher, the pinned CPU build); the GPU is
declared, the one simulated part: a node whose declared GPU is treated as a real NVIDIA one
must refuse, and the same GPU declared virtual must run on the CPU build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.core.backends import llama_cpp
from gpufleet.core.schemas import DeploymentConfig, ModelSource, Placement
from gpufleet.node import engines
from gpufleet.node.context import NodeContext
from gpufleet.runtimes import llama_server

pytestmark = pytest.mark.rpc  # waits for the pinned llama.cpp build, like the other rpc tests

GIB = 1 << 30

#: `--list-devices` as llama.cpp b11434 prints it: a CUDA build on an H200, a CPU build.
CUDA_LISTING = "Available devices:\n  CUDA0: NVIDIA H200 (143155 MiB, 142567 MiB free)\n"
CPU_LISTING = "Available devices:\n"


@pytest.mark.parametrize(
    ("listing", "devices"),
    [
        (CUDA_LISTING, ("cpu", "cuda")),
        (CPU_LISTING, ("cpu",)),
        ("  ROCm0: AMD Instinct MI300X (196592 MiB)\n  ROCm1: AMD Instinct MI300X (196592 MiB)\n", ("cpu", "rocm")),
        ("  CUDA0: A\n  Vulkan0: B\n", ("cpu", "cuda", "vulkan")),
    ],
)
def test_devices_are_read_from_list_devices(listing: str, devices: tuple[str, ...]) -> None:
    assert llama_server.parse_devices(listing) == devices


def test_version_is_llama_cpps_build_number() -> None:
    assert llama_server.parse_version("version: 0.6.0-dev (build 11434, commit unknown)\nbuilt with GNU") == "b11434"
    assert llama_server.parse_version("version: 4589 (0a1b2c3)\nbuilt with cc") == "b4589"  # older builds
    assert llama_server.parse_version("garbage") == "unknown"


def test_xllamacpp_wheel_is_reported_as_a_cpu_build() -> None:
    launcher = llama_server.describe(tuple(llama_server.LAUNCHER))
    assert launcher.devices == ("cpu",)
    assert launcher.version.startswith("xllamacpp-")


def node_with_gpu(tmp_path: Path, *, virtual: bool) -> NodeContext:
    return NodeContext("gpu-node", tmp_path, "127.0.0.1", frozenset({0}) if virtual else frozenset(),
                       ((0, 80 * GIB),))


def gpu_launch() -> llama_cpp.LaunchDescription:
    config = DeploymentConfig(source=ModelSource(local_path="/m/tiny.gguf"))
    return llama_cpp.build_launch(config, model_path="/m/tiny.gguf", alias="tiny", host="127.0.0.1", port=40000,
                                  placement=Placement(worker="gpu-node", gpu_indexes=[0]), default_context=512)


def test_a_real_gpu_placement_is_refused_on_cpu_only_llama_cpp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rpc_binaries: tuple[list[str], list[str]]
) -> None:
    built, _ = rpc_binaries
    monkeypatch.setenv("GPUFLEET_LLAMA_SERVER", built[0])  # the pinned build: CPU-only on this machine
    assert llama_server.describe(tuple(built)).devices == ("cpu",)
    node = node_with_gpu(tmp_path, virtual=False)
    desc = gpu_launch()
    assert node.device_kind(list(desc.gpu_indexes)) == "cuda"
    with pytest.raises(engines.EngineUnavailable) as refused:
        engines.resolve_program(desc, node, "cuda")
    message = str(refused.value)
    assert "no CUDA support" in message
    assert "scripts/build-llama-cpp.sh" in message and "GPUFLEET_LLAMA_SERVER" in message
    assert "xllamacpp wheel (CPU build) (cpu)" in message  # every server it checked is named with its devices
    assert "gpu-node" in message


def test_a_virtual_gpu_placement_runs_on_the_cpu_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rpc_binaries: tuple[list[str], list[str]]
) -> None:
    built, _ = rpc_binaries
    monkeypatch.setenv("GPUFLEET_LLAMA_SERVER", built[0])
    node = node_with_gpu(tmp_path, virtual=True)
    desc = gpu_launch()
    device = node.device_kind(list(desc.gpu_indexes))
    assert device == "cpu"
    assert engines.resolve_program(desc, node, device) == [built[0]]
    assert desc.env["CUDA_VISIBLE_DEVICES"] == "0"


def test_node_reports_each_llama_cpp_with_its_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rpc_binaries: tuple[list[str], list[str]]
) -> None:
    built, _ = rpc_binaries
    monkeypatch.setenv("GPUFLEET_LLAMA_SERVER", built[0])
    monkeypatch.setenv("GPUFLEET_ENGINES_HOME", str(tmp_path / "engines"))
    report = [e for e in engines.node_engines(node_with_gpu(tmp_path, virtual=True)) if e.engine == "llama.cpp"]
    assert report[0].version == "b11434" and report[0].devices == ["cpu"] and report[0].default
    assert any(e.version.startswith("xllamacpp-") for e in report)
    # its flags, read from its own --help, for the deploy-time check of backend parameters
    assert {"--ctx-size", "-c", "--n-gpu-layers", "--flash-attn"} <= set(report[0].flags)
