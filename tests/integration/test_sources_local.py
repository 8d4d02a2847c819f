"""Local paths: single and split GGUF, safetensors directories, "not here" vs broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.core.schemas import ModelSource
from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from gpufleet.sources import ModelNotVisible, ModelSourceError, NotAModel, read_local_metadata, read_metadata
from gpufleet.sources.local import resolve_gguf_path
from gpufleet.sources.resolve import clear_cache
from tests.support import synthetic_models as sm


def write_virtual(path: Path, head: bytes, size: int) -> None:
    """A sparse file: the header, then a hole up to `size` (no disk used)."""
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)


def local(path: Path | str) -> ModelSource:
    return ModelSource(kind="local_path", local_path=str(path))


def test_real_tiny_model(tmp_path: Path) -> None:
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "notes.txt").write_text("not listed: only the file's GGUF siblings are")
    found, meta = read_local_metadata(str(path))
    assert found == path and meta.architecture == "llama" and meta.files[0].size == path.stat().st_size
    assert resolve_gguf_path(str(tmp_path)) == path  # a directory with one model


def test_split_gguf_by_any_shard(tmp_path: Path) -> None:
    shape = sm.LlamaShape(n_layers=4)
    shards = sm.llama_gguf_shards(shape, 2)
    for i, (head, size) in enumerate(shards):
        write_virtual(tmp_path / f"m-F16-{i + 1:05d}-of-00002.gguf", head, size)
    for shard in ("m-F16-00002-of-00002.gguf", "m-F16-00001-of-00002.gguf"):
        found, meta = read_local_metadata(str(tmp_path / shard))
        assert found.name == "m-F16-00001-of-00002.gguf"  # llama.cpp is pointed at the first shard
        assert meta.file_size == sum(s for _, s in shards) and len(meta.files) == 2
        assert meta.n_layers == 4


def test_safetensors_directory(tmp_path: Path) -> None:
    tensors = sm.llama_hf_tensors(layers=1, hidden=32, heads=2, kv_heads=2, ff=64, vocab=50, dtype="F16")
    head, size = sm.safetensors_header(tensors)
    write_virtual(tmp_path / "model.safetensors", head, size)
    (tmp_path / "config.json").write_bytes(sm.llama_config(1, 32, 2, 2, 64, 50))
    meta = read_metadata(local(tmp_path))
    assert meta.format == "safetensors" and meta.n_layers == 1
    assert read_metadata(local(tmp_path / "model.safetensors")) == meta  # a shard names its checkpoint
    assert meta.weight_bytes_by_dtype == {"F16": size - len(head)}


def test_missing_path_is_not_visible_rather_than_broken(tmp_path: Path) -> None:
    with pytest.raises(ModelNotVisible, match="/no/such/model.gguf not found"):
        read_metadata(local("/no/such/model.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 32)
    with pytest.raises(ModelSourceError, match="is not a valid GGUF file") as exc:
        read_metadata(local(bad))
    assert not isinstance(exc.value, ModelNotVisible)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"notes.txt": b"hello"}, "holds no GGUF or safetensors model"),
        ({"model.safetensors": b"\x08" + bytes(7) + b"{}      "}, "no config.json"),
    ],
)
def test_directory_without_a_model(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(NotAModel, match=message):
        read_metadata(local(tmp_path))


def test_diffusers_pipeline_is_an_image_model(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "unet").mkdir()
    head, size = sm.safetensors_header([("conv_in.weight", "F16", (320, 4, 3, 3))])
    write_virtual(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", head, size)
    meta = read_metadata(local(tmp_path))
    assert (meta.category, meta.architecture) == ("image", "StableDiffusionPipeline")
    assert meta.n_params == 320 * 4 * 3 * 3


_TINY: dict[str, bytes] = {}


def _tiny_bytes(tmp: Path) -> bytes:
    if "b" not in _TINY:
        _TINY["b"] = write_tiny_llama_gguf(tmp / "tiny-src.gguf").read_bytes()
    return _TINY["b"]


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(4, 60_000), flips=st.lists(st.tuples(st.integers(4, 50_000), st.integers(0, 255)), max_size=4))
def test_damaged_local_files_fail_cleanly(tmp_path: Path, cut: int, flips: list[tuple[int, int]]) -> None:
    """Truncated or bit-flipped files through the mmap path: a model or a
    ModelSourceError, never another exception (nor a pinned mmap)."""
    clear_cache()
    data = bytearray(_tiny_bytes(tmp_path)[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    path = tmp_path / "damaged.gguf"
    path.write_bytes(bytes(data))
    try:
        read_metadata(local(path))
    except ModelSourceError:
        pass
