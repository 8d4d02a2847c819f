"""llama.cpp (`llama-server`) command lines.

The node chooses the executable (a `llama-server` on PATH, or gpufleet's
launcher over the xllamacpp wheel); this module only decides the arguments,
so what runs is decided in one pure, tested place.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpufleet.core.backends.launch import LaunchDescription, Program
from gpufleet.core.backends.params import BackendParam, BackendParamError, find_value, parse_params
from gpufleet.core.backends.registry import LLAMA_CPP
from gpufleet.core.schemas import DeploymentConfig, Placement

NAME = "llama.cpp"
PROGRAM = Program("executable", "llama-server")
#: llama-server answers /health 503 while loading, 200 once ready; older launchers only have /v1/models
HEALTH_PATHS = ("/health", "/v1/models")

#: Flags gpufleet sets from the deployment and placement; users may not override them.
MANAGED_FLAGS: dict[str, str] = {
    "--model": "it comes from the deployment's source",
    "-m": "it comes from the deployment's source",
    "--host": "the node binds every backend to its own address",
    "--port": "the node allocates a free port per instance",
    "--alias": "it is the deployment name",
    "-a": "it is the deployment name",
    "--rpc": "gpufleet starts the RPC servers of a distributed instance (--distributed) and passes them",
}
CTX_FLAGS = ("--ctx-size", "-c")
GPU_LAYER_FLAGS = ("--n-gpu-layers", "-ngl", "--gpu-layers")
OFFLOAD_ALL_LAYERS = "999"  # llama.cpp clamps to the model's layer count + output
TENSOR_SPLIT_FLAGS = ("--tensor-split", "-ts")
PARALLEL_FLAGS = ("--parallel", "-np")


def gpu_layers_arg(placement: Placement) -> str:
    """All layers on the GPUs, the number placement found to fit (partial offload), or 0 on CPU."""
    if not placement.gpu_indexes:
        return "0"
    if placement.offloaded and placement.gpu_layers is not None:
        return str(placement.gpu_layers)
    return OFFLOAD_ALL_LAYERS


def validate_params(raw: list[str]) -> list[BackendParam]:
    """Raise :class:`BackendParamError` for malformed or managed flags."""
    params = parse_params(raw, MANAGED_FLAGS)
    ctx = find_value(params, *CTX_FLAGS)
    if ctx is not None and (not ctx.isdigit()):
        raise BackendParamError(f"--ctx-size must be a non-negative integer, got {ctx!r}")
    return params


def context_size(raw: list[str]) -> int | None:
    """The context size the user asked for, or None for gpufleet's default (0 = model's)."""
    value = find_value(validate_params(raw), *CTX_FLAGS)
    return int(value) if value else None


def build_launch(
    config: DeploymentConfig,
    *,
    model_path: str,
    alias: str,
    host: str,
    port: int,
    placement: Placement,
    default_context: int,
    rpc_servers: Sequence[str] = (),
    local_gpus: Sequence[int] | None = None,
    version: str = LLAMA_CPP.default_version,
) -> LaunchDescription:
    """The `llama-server` command line of one instance.

    ``rpc_servers`` (``host:port``) are the RPC devices of a distributed instance,
    in :meth:`Placement.devices` order; ``local_gpus`` are the GPUs this process
    drives itself (default: the placement's GPUs on this worker). A node whose
    GPUs are virtual serves them through loopback RPC servers too, and passes
    ``local_gpus=[]``. Together they must be the placement's devices, in order,
    because ``--tensor-split`` is positional."""
    params = validate_params(config.backend_params)
    local = list(placement.gpu_indexes if local_gpus is None else local_gpus)
    _check_devices(placement, rpc_servers, local)
    args = ["--model", model_path, "--host", host, "--port", str(port), "--alias", alias]
    if find_value(params, *CTX_FLAGS) is None:
        args += ["--ctx-size", str(default_context)]
    if rpc_servers:
        args += ["--rpc", ",".join(rpc_servers)]
    if find_value(params, *GPU_LAYER_FLAGS) is None:
        args += ["--n-gpu-layers", gpu_layers_arg(placement)]
    if find_value(params, *TENSOR_SPLIT_FLAGS) is None and len(placement.tensor_split) > 1:
        # The split placement estimated with, in llama.cpp's device order: RPC devices
        # first, then local GPUs in gpu_indexes order (= CUDA_VISIBLE_DEVICES order).
        args += ["--tensor-split", ",".join(f"{x:g}" for x in placement.tensor_split)]
    if find_value(params, *PARALLEL_FLAGS) is None:
        # The estimator assumes one sequence; recent llama-server builds default to 4 slots.
        args += ["--parallel", "1"]
    for p in params:
        args += p.as_args()
    env = dict(config.env)
    # Restrict the process to its claimed GPUs; "" hides all GPUs from a CPU placement.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in local)
    return LaunchDescription(engine=config.backend, version=version, program=PROGRAM, args=args, env=env,
                             port=port, health_paths=HEALTH_PATHS, gpu_indexes=tuple(local), model_path=model_path)


def _check_devices(placement: Placement, rpc_servers: Sequence[str], local: list[int]) -> None:
    expected = len(placement.devices())
    if placement.distributed and len(rpc_servers) + len(local) != expected:
        raise ValueError(
            f"instance spans {expected} GPUs ({placement.devices()}) but gets {len(rpc_servers)} RPC "
            f"servers and {len(local)} local GPUs"
        )
    if not placement.distributed and rpc_servers:
        raise ValueError("RPC servers given for an instance placed on one worker")
