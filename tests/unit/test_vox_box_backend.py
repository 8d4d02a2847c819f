"""vox-box launch descriptions: golden argv/env for speech-to-text and text-to-speech."""

from __future__ import annotations

import pytest

from gpufleet.core.backends import vox_box
from gpufleet.core.backends.params import BackendParamError
from gpufleet.core.metadata import ModelMetadata
from gpufleet.core.placement_spec import PlacementPart
from gpufleet.core.schemas import DeploymentConfig, ModelSource, Placement

MiB = 1 << 20
WHISPER = ModelMetadata(format="safetensors", architecture="WhisperForConditionalGeneration",
                        category="speech-to-text", file_size=1500 * MiB, tensor_bytes=1500 * MiB)
COSYVOICE = ModelMetadata(format="safetensors", architecture="CosyVoice2", category="text-to-speech",
                          file_size=600 * MiB, tensor_bytes=600 * MiB)
BARK = ModelMetadata(format="safetensors", architecture="BarkModel", category="text-to-speech",
                     file_size=1700 * MiB, tensor_bytes=1700 * MiB)


def config(params: list[str] | None = None, **kw: object) -> DeploymentConfig:
    return DeploymentConfig(source=ModelSource(local_path="/m/audio"), backend="vox-box",
                            backend_params=params or [], env={"A": "1"}, **kw)  # type: ignore[arg-type]


def base(device: str) -> list[str]:
    return ["start", "--model", "/m/audio", "--host", "127.0.0.1", "--port", "40001", "--data-dir", "/n/vox",
            "--device", device]


@pytest.mark.parametrize(("meta", "placement", "virtual", "device", "visible", "gpus"), [
    # speech-to-text (faster-whisper drops the index): the process sees only GPU 2, as its cuda:0
    (WHISPER, Placement(worker="a", gpu_indexes=[2]), False, "cuda:0", "2", (2,)),
    # text-to-speech with Bark: torch device cuda:0 of the one visible GPU
    (BARK, Placement(worker="a", gpu_indexes=[1]), False, "cuda:0", "1", (1,)),
    # CosyVoice rewrites CUDA_VISIBLE_DEVICES to the --device index: give it the real one (3 -> "3" again)
    (COSYVOICE, Placement(worker="a", gpu_indexes=[3]), False, "cuda:3", "3", (3,)),
    # a CPU placement
    (WHISPER, Placement(worker="a", stage="cpu"), False, "cpu", "", ()),
    # declared (virtual) GPUs: nothing real to drive
    (COSYVOICE, Placement(worker="a", gpu_indexes=[0]), True, "cpu", "", ()),
])
def test_golden_launch(meta: ModelMetadata, placement: Placement, virtual: bool, device: str, visible: str,
                       gpus: tuple[int, ...]) -> None:
    spec = vox_box.build_launch(config(), metadata=meta, placement=placement, model_path="/m/audio",
                                host="127.0.0.1", port=40001, data_dir="/n/vox", virtual_gpus=virtual)
    assert spec.program.kind == "python-module" and spec.program.name == "vox_box.main"
    assert spec.args == base(device)
    # IS_FASTER_WHISPER=false: vox-box must not rewrite CUDA_VISIBLE_DEVICES for paths named *faster*whisper*
    assert spec.env == {"IS_FASTER_WHISPER": "false", "A": "1", "CUDA_VISIBLE_DEVICES": visible}
    assert spec.gpu_indexes == gpus
    assert (spec.engine, spec.version, spec.port) == ("vox-box", "0.0.21", 40001)
    assert spec.health_paths == ("/health", "/v1/models")
    assert spec.readiness_timeout_s == 300.0


def test_routes_per_category() -> None:
    assert vox_box.ROUTES["speech-to-text"][0] == "/v1/audio/transcriptions"
    assert vox_box.ROUTES["text-to-speech"][0] == "/v1/audio/speech"


def test_only_the_first_placed_gpu_is_driven() -> None:
    spec = vox_box.build_launch(config(), metadata=WHISPER, placement=Placement(worker="a", gpu_indexes=[4, 5]),
                                model_path="/m/audio", host="h", port=1, data_dir="/d")
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "4" and spec.gpu_indexes == (4,)


def test_served_name_is_accepted_and_not_passed() -> None:
    spec = vox_box.build_launch(config(), metadata=WHISPER, placement=Placement(worker="a"), model_path="/m/audio",
                                served_name="whisper", host="127.0.0.1", port=40001, data_dir="/n/vox")
    assert spec.args == base("cpu")  # vox-box 0.0.21 has no flag for it


def test_debug_switch_is_appended() -> None:
    spec = vox_box.build_launch(config(["--debug"]), metadata=WHISPER, placement=Placement(worker="a"),
                                model_path="/m/audio", host="127.0.0.1", port=40001, data_dir="/n/vox")
    assert spec.args == [*base("cpu"), "--debug"]


@pytest.mark.parametrize(("params", "message"), [
    (["--port=1"], "--port is set by gpufleet"),
    (["--device=cuda:1"], "placement decides the device"),
    (["--data-dir=/tmp"], "--data-dir is set by gpufleet"),
    (["--huggingface-repo-id=openai/whisper"], "gpufleet downloads the weights"),
    (["--beam-size=5"], "has no flag --beam-size"),
    (["--debug=1"], "takes no value"),
])
def test_refused_params(params: list[str], message: str) -> None:
    with pytest.raises(BackendParamError, match=message):
        vox_box.validate_params(params)


def test_text_models_and_spanning_placements_are_refused() -> None:
    llm = WHISPER.model_copy(update={"category": "llm"})
    with pytest.raises(ValueError, match="vox-box serves speech-to-text and text-to-speech models, not llm"):
        vox_box.build_launch(config(), metadata=llm, placement=Placement(worker="a"), model_path="/m", host="h",
                             port=1, data_dir="/d")
    spanning = Placement(worker="a", gpu_indexes=[0], parts=[PlacementPart(worker="b", gpu_indexes=[0])])
    with pytest.raises(ValueError, match="runs on one worker"):
        vox_box.build_launch(config(), metadata=WHISPER, placement=spanning, model_path="/m", host="h", port=1,
                             data_dir="/d")
