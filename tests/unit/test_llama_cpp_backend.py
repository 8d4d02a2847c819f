from __future__ import annotations

import pytest

from gpufleet.core.backends import llama_cpp
from gpufleet.core.backends.params import BackendParamError, parse_param
from gpufleet.core.schemas import DeploymentConfig, ModelSource, Placement


@pytest.mark.parametrize(
    ("raw", "flag", "value"),
    [
        ("--ctx-size=1024", "--ctx-size", "1024"),
        ("--ctx-size 1024", "--ctx-size", "1024"),
        ("--flash-attn", "--flash-attn", None),
        ("-c=512", "-c", "512"),
        ("--override-kv=a=b", "--override-kv", "a=b"),  # only the first '=' splits
    ],
)
def test_parse_param(raw: str, flag: str, value: str | None) -> None:
    p = parse_param(raw)
    assert (p.flag, p.value) == (flag, value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["ctx-size=1024"], "must start with '-'"),
        (["--ctx size=1"], "invalid flag name"),
        (["--=3"], "invalid flag name"),
        (["--ctx-size="], "empty value"),
        (["--port=9000"], "--port is set by gpufleet"),
        (["-m /x.gguf"], "-m is set by gpufleet"),
        (["--ctx-size=big"], "--ctx-size must be a non-negative integer"),
    ],
)
def test_invalid_params(raw: list[str], message: str) -> None:
    with pytest.raises(BackendParamError, match=message):
        llama_cpp.validate_params(raw)


def config(params: list[str]) -> DeploymentConfig:
    return DeploymentConfig(source=ModelSource(local_path="/m/x.gguf"), backend_params=params, env={"A": "1"})


def test_command_line_cpu_defaults() -> None:
    spec = llama_cpp.build_launch(
        config([]), model_path="/m/x.gguf", alias="tiny", host="127.0.0.1", port=40000,
        placement=Placement(worker="a"), default_context=512,
    )
    assert spec.args == [
        "--model", "/m/x.gguf", "--host", "127.0.0.1", "--port", "40000", "--alias", "tiny",
        "--ctx-size", "512", "--n-gpu-layers", "0", "--parallel", "1",
    ]
    assert spec.env == {"A": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        # partial offload: the layer count placement found to fit, not "all"
        (Placement(worker="a", gpu_indexes=[0], offloaded=True, gpu_layers=48, total_layers=81),
         ["--n-gpu-layers", "48"]),
        # two GPUs: the split placement estimated with, in gpu_indexes order
        (Placement(worker="a", gpu_indexes=[2, 5], tensor_split=[0.75, 0.25]),
         ["--n-gpu-layers", "999", "--tensor-split", "0.75,0.25"]),
        # one GPU: no split to pass
        (Placement(worker="a", gpu_indexes=[1], tensor_split=[1.0]), ["--n-gpu-layers", "999"]),
    ],
)
def test_command_line_follows_placement(placement: Placement, expected: list[str]) -> None:
    spec = llama_cpp.build_launch(
        config([]), model_path="/m/x.gguf", alias="t", host="h", port=1, placement=placement, default_context=8,
    )
    start = spec.args.index("--n-gpu-layers")
    assert spec.args[start:start + len(expected)] == expected
    assert spec.args[-2:] == ["--parallel", "1"]


def test_user_layers_and_split_win_over_placement() -> None:
    placement = Placement(worker="a", gpu_indexes=[0, 1], offloaded=True, gpu_layers=10, tensor_split=[1, 1])
    spec = llama_cpp.build_launch(
        config(["-ngl=5", "-ts=3,1", "-np=2"]), model_path="/m/x.gguf", alias="t", host="h", port=1,
        placement=placement, default_context=8,
    )
    assert spec.args[spec.args.index("--ctx-size") + 2:] == ["-ngl", "5", "-ts", "3,1", "-np", "2"]


def test_command_line_gpu_and_user_params() -> None:
    spec = llama_cpp.build_launch(
        config(["--ctx-size=1024", "--parallel 2"]), model_path="/m/x.gguf", alias="tiny",
        host="0.0.0.0", port=1, placement=Placement(worker="a", gpu_indexes=[1, 3]), default_context=512,
    )
    # user ctx wins (no default added); all layers offloaded; GPUs restricted to the claim
    assert spec.args[-6:] == ["--n-gpu-layers", "999", "--ctx-size", "1024", "--parallel", "2"]
    assert spec.args.count("--parallel") == 1  # the user's, not gpufleet's default
    assert "512" not in spec.args
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "1,3"


def test_context_size_from_params() -> None:
    assert llama_cpp.context_size(["--ctx-size=2048"]) == 2048
    assert llama_cpp.context_size(["-c 128", "--ctx-size=64"]) == 64  # last one wins, like llama.cpp
    assert llama_cpp.context_size([]) is None
