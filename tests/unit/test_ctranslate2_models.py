"""A faster-whisper (CTranslate2) directory is recognised as a speech-to-text model for vox-box.

The files are the ones such repositories hold (Systran/faster-whisper-*: model.bin, config.json,
tokenizer.json, preprocessor_config.json, vocabulary.*); only their names and sizes matter here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.core.backends.choose import choose_backend
from gpufleet.core.estimation import audio
from gpufleet.core.estimation.types import EstimateOptions
from gpufleet.core.schemas import ModelSource
from gpufleet.sources.errors import NotAModel
from gpufleet.sources.resolve import resolve

MODEL_BIN = 75_000_000  # bytes of model.bin (faster-whisper-tiny is ~75 MB)


def write(directory: Path, files: dict[str, int]) -> Path:
    directory.mkdir()
    for name, size in files.items():
        (directory / name).write_bytes(b"\0" * size)
    return directory


@pytest.mark.parametrize("vocabulary", ["vocabulary.txt", "vocabulary.json", "tokenizer.json"])
def test_a_ctranslate2_directory_is_a_speech_to_text_model(tmp_path: Path, vocabulary: str) -> None:
    model = write(tmp_path / "faster-whisper-tiny",
                  {"model.bin": MODEL_BIN, "config.json": 10, "preprocessor_config.json": 10, vocabulary: 10})
    choice, meta = resolve(ModelSource(local_path=str(model)))
    assert choice.format == meta.format == "ctranslate2"
    assert [f.path for f in choice.weights] == ["model.bin"]
    assert {f.path for f in choice.extras} == {"config.json", "preprocessor_config.json", vocabulary}
    assert (meta.category, meta.tensor_bytes, meta.file_size) == ("speech-to-text", MODEL_BIN, MODEL_BIN)
    assert choose_backend(meta.format, meta.category) == "vox-box"


def test_its_estimate_is_the_audio_rule(tmp_path: Path) -> None:
    model = write(tmp_path / "m", {"model.bin": MODEL_BIN, "config.json": 10, "tokenizer.json": 10})
    _, meta = resolve(ModelSource(local_path=str(model)))
    est = audio.estimate_audio(meta, EstimateOptions(backend="vox-box", gpu_memory=(80 << 30,)))
    # weights x 1.2 + 512 MiB = 75,000,000 + 15,000,000 (14,999,999 in floating point) + 536,870,912
    assert est.claims[0] == MODEL_BIN + 14_999_999 + 512 * (1 << 20)


@pytest.mark.parametrize("files", [
    {"model.bin": 10, "config.json": 10},  # no vocabulary: not a CTranslate2 model
    {"pytorch_model.bin": 10, "config.json": 10, "tokenizer.json": 10},  # torch's checkpoint, not CTranslate2
])
def test_other_bin_directories_are_still_refused(tmp_path: Path, files: dict[str, int]) -> None:
    with pytest.raises(NotAModel, match="no GGUF or safetensors model"):
        resolve(ModelSource(local_path=str(write(tmp_path / "m", files))))


def test_a_user_cannot_put_it_on_vllm(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vllm cannot serve ctranslate2 models; use vox-box"):
        choose_backend("ctranslate2", "speech-to-text", "vllm")
