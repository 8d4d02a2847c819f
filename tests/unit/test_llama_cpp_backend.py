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


# --- distributed instances (llama.cpp RPC) --------------------------------------------------

from gpufleet.core.backends import llama_rpc  # noqa: E402
from gpufleet.core.backends.launch import LaunchDescription  # noqa: E402
from gpufleet.core.placement_spec import PlacementPart  # noqa: E402

#: main "a" with GPUs 0, 1; part "b" with GPU 2; llama.cpp order: b:2, a:0, a:1 (RPC first).
DISTRIBUTED = Placement(worker="a", gpu_indexes=[0, 1], stage="distributed", tensor_split=[0.5, 1, 1],
                        parts=[PlacementPart(worker="b", gpu_indexes=[2])])


def launch(placement: Placement, **kw: object) -> LaunchDescription:
    return llama_cpp.build_launch(config([]), model_path="/m.gguf", alias="x", host="h", port=1,
                                  placement=placement, default_context=512, **kw)  # type: ignore[arg-type]


def value_of(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_distributed_devices_put_rpc_first() -> None:
    assert DISTRIBUTED.devices() == [("b", 2), ("a", 0), ("a", 1)]
    assert DISTRIBUTED.workers() == ["a", "b"]


def test_distributed_on_real_gpus_passes_rpc_servers_and_the_split_in_device_order() -> None:
    spec = launch(DISTRIBUTED, rpc_servers=["10.0.0.2:50052"])
    assert value_of(spec.args, "--rpc") == "10.0.0.2:50052"
    assert value_of(spec.args, "--tensor-split") == "0.5,1,1"
    assert value_of(spec.args, "--n-gpu-layers") == "999"
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "0,1"  # the main worker's own GPUs, after the RPC device


def test_distributed_on_virtual_gpus_serves_every_gpu_over_rpc() -> None:
    spec = launch(DISTRIBUTED, rpc_servers=["b:1", "a:2", "a:3"], local_gpus=[])
    assert value_of(spec.args, "--rpc") == "b:1,a:2,a:3"
    assert spec.env["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize(("rpc", "local"), [([], None), (["b:1", "a:2"], []), (["b:1"], [0])])
def test_distributed_devices_must_match_the_placement(rpc: list[str], local: list[int] | None) -> None:
    with pytest.raises(ValueError, match="spans 3 GPUs"):
        launch(DISTRIBUTED, rpc_servers=rpc, local_gpus=local)


def test_rpc_servers_for_a_single_worker_instance_are_refused() -> None:
    with pytest.raises(ValueError, match="one worker"):
        launch(Placement(worker="a", gpu_indexes=[0]), rpc_servers=["b:1"])


def test_users_cannot_set_rpc_themselves() -> None:
    with pytest.raises(BackendParamError, match="--rpc is set by gpufleet"):
        llama_cpp.validate_params(["--rpc=10.0.0.9:50052"])


@pytest.mark.parametrize(("virtual", "device_args", "visible"), [(True, ["--device", "CPU"], ""), (False, [], "3")])
def test_rpc_server_command_line(virtual: bool, device_args: list[str], visible: str) -> None:
    spec = llama_rpc.build_rpc_server_launch(host="10.0.0.2", port=50052, gpu_index=3, virtual=virtual,
                                             cache_dir="/n/rpc-cache")
    assert spec.args == ["--host", "10.0.0.2", "--port", "50052", "--cache", *device_args]
    assert spec.env == {"CUDA_VISIBLE_DEVICES": visible, "LLAMA_CACHE": "/n/rpc-cache"}


@pytest.mark.parametrize(("host", "expected"), [("10.0.0.2", "10.0.0.2:5"), ("::1", "[::1]:5")])
def test_rpc_endpoint(host: str, expected: str) -> None:
    assert llama_rpc.endpoint(host, 5) == expected
