"""vox-box (GPUStack's speech server) command lines (pure).

What vox-box 0.0.21 is, read from its wheel (``vox_box-0.0.21-py3-none-
manylinux2014_x86_64.whl``):

- program: the console script ``vox-box`` is ``vox_box.main:main``
  (``entry_points.txt``) and ``vox_box/main.py`` ends in ``if __name__ ==
  "__main__": main()``, so the node runs ``python -m vox_box.main`` with the
  interpreter of the version's environment, like vLLM.
- arguments: ``start --model PATH --host H --port P --data-dir DIR --device D``
  (``vox_box/cmd/start.py``; also ``-d/--debug``, ``--huggingface-repo-id``,
  ``--model-scope-model-id``). ``--data-dir`` defaults to ``/var/lib/vox-box``,
  which a non-root node cannot create, so the node always passes one.
  ``--device`` is ``cpu`` (its default) or ``cuda:N``.
- GPUs: the backends read ``--device`` differently: faster-whisper drops the
  index (``cuda``), FunASR, Bark and Dia use it as a torch device, CosyVoice
  *rewrites* ``CUDA_VISIBLE_DEVICES`` to the index before CUDA starts
  (``CosyVoice._parse_and_set_cuda_visible_devices``). So the node shows the
  process only its placed GPU (``CUDA_VISIBLE_DEVICES=N``) and passes
  ``cuda:0``, except for CosyVoice, which gets ``cuda:N`` so its rewrite
  leaves the same GPU visible. A virtual or CPU placement runs ``--device cpu``
  with no GPU visible. vox-box itself sets ``CUDA_VISIBLE_DEVICES`` to the
  ``--device`` index for a model whose path matches ``faster.*whisper`` unless
  ``IS_FASTER_WHISPER`` says otherwise (``vox_box/utils/model.py``,
  ``preconfigure_faster_whisper_env``): that would turn our ``2`` into ``0``,
  so the node sets ``IS_FASTER_WHISPER=false`` (a user's value stands).
  vox-box drives one device: an instance placed on
  several GPUs uses the first (the estimate claims nothing on the others).
- readiness: ``start`` loads the model *before* uvicorn binds the port
  (``run_model_instance`` then ``run_server``), so the first answer of
  ``/health`` (``{"status": "ok"}``) means loaded; ``/v1/models`` is the
  fallback. Loading a text-to-speech model on a CPU takes minutes: 300 s.
- routes: speech-to-text ``POST /v1/audio/transcriptions``; text-to-speech
  ``POST /v1/audio/speech`` and ``GET /v1/voices``; both ``/v1/models``,
  ``/v1/languages``.
"""

from __future__ import annotations

from gpufleet.core.backends.launch import LaunchDescription, Program
from gpufleet.core.backends.params import BackendParam, BackendParamError, parse_params
from gpufleet.core.backends.registry import VOX_BOX
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.schemas import DeploymentConfig, Placement

NAME = "vox-box"
PROGRAM = Program("python-module", "vox_box.main")
HEALTH_PATHS = ("/health", "/v1/models")
READINESS_S = 300.0
ROUTES: dict[str, tuple[str, ...]] = {
    "speech-to-text": ("/v1/audio/transcriptions", "/v1/models", "/v1/languages"),
    "text-to-speech": ("/v1/audio/speech", "/v1/voices", "/v1/models", "/v1/languages"),
}

#: Flags gpufleet sets; users may not set them.
MANAGED_FLAGS: dict[str, str] = {
    "--model": "it comes from the deployment's source",
    "--host": "the node binds every backend to its own address",
    "--port": "the node allocates a free port per instance",
    "--device": "placement decides the device (cuda:N or cpu)",
    "--data-dir": "the node gives each vox-box a directory it can write",
    "--huggingface-repo-id": "gpufleet downloads the weights and passes --model",
    "--model-scope-model-id": "gpufleet downloads the weights and passes --model",
}
#: The only other flags ``vox-box start`` accepts (argparse refuses the rest at start-up).
USER_FLAGS = ("-d", "--debug")


def validate_params(raw: list[str]) -> list[BackendParam]:
    """Raise :class:`BackendParamError` for managed flags and for flags ``vox-box start`` does not have."""
    params = parse_params(raw, MANAGED_FLAGS)
    for p in params:
        if p.flag not in USER_FLAGS:
            raise BackendParamError(
                f"vox-box {VOX_BOX.default_version} `start` has no flag {p.flag}; it accepts "
                f"{', '.join(USER_FLAGS)} besides the ones gpufleet sets ({', '.join(MANAGED_FLAGS)})")
        if p.value is not None:
            raise BackendParamError(f"{p.flag} is a switch and takes no value, got {p.value!r}")
    return params


def rewrites_visible_devices(metadata: ModelMetadata | None) -> bool:
    """CosyVoice models: vox-box sets ``CUDA_VISIBLE_DEVICES`` from ``--device cuda:N`` itself."""
    return metadata is not None and "cosyvoice" in metadata.architecture.lower()


def device_arg(gpu: int | None, metadata: ModelMetadata | None) -> str:
    """``--device`` for a process that sees only ``gpu`` (None: CPU); see the module docstring."""
    if gpu is None:
        return "cpu"
    return f"cuda:{gpu}" if rewrites_visible_devices(metadata) else "cuda:0"


def build_launch(
    config: DeploymentConfig,
    *,
    metadata: ModelMetadata | None,
    placement: Placement,
    model_path: str,
    host: str,
    port: int,
    data_dir: str,
    served_name: str | None = None,
    virtual_gpus: bool = False,
    version: str = VOX_BOX.default_version,
) -> LaunchDescription:
    """The ``vox-box start`` launch of one instance (``data_dir``: a writable directory of the node's).

    ``served_name`` is taken for the same call shape as the other engines and
    not passed on: ``vox-box start`` has no flag to name the model (its
    ``/v1/models`` names it after the model's files); gpufleet routes by
    instance, not by that name."""
    params = validate_params(config.backend_params)
    category = config.category or (metadata.category if metadata else None)
    if category is not None and category not in VOX_BOX.categories:
        raise ValueError(f"vox-box serves {' and '.join(VOX_BOX.categories)} models, not {category}")
    if placement.distributed:
        raise ValueError("vox-box runs on one worker; the placement spans several")
    gpu = None if virtual_gpus or not placement.gpu_indexes else placement.gpu_indexes[0]
    args = ["start", "--model", model_path, "--host", host, "--port", str(port), "--data-dir", data_dir,
            "--device", device_arg(gpu, metadata)]
    for p in params:
        args += p.as_args()
    env = {"IS_FASTER_WHISPER": "false", **config.env}
    env["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)
    return LaunchDescription(engine=NAME, version=version, program=PROGRAM, args=args, env=env, port=port,
                             health_paths=HEALTH_PATHS, readiness_timeout_s=READINESS_S,
                             gpu_indexes=() if gpu is None else (gpu,), model_path=model_path)
