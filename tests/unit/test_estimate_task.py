"""The deploy flow's estimate-resources task is the pure summary (no second formula)."""

from __future__ import annotations

from pathlib import Path

from prefect.logging import disable_run_logger

from gpufleet.core.estimation.summary import summarize
from gpufleet.core.schemas import DeploymentConfig, ModelSource
from gpufleet.demo.tiny_model import write_tiny_llama_gguf
from gpufleet.sources.local import read_local_metadata
from tasks.estimation import estimate_resources


def config(path: Path, *params: str) -> DeploymentConfig:
    return DeploymentConfig(source=ModelSource(kind="local_path", local_path=str(path)), backend_params=list(params))


def test_task_returns_the_summary(tmp_path: Path) -> None:
    path = write_tiny_llama_gguf(tmp_path / "t.gguf")
    meta = read_local_metadata(path)[1]
    with disable_run_logger():
        got = estimate_resources.fn(meta, config(path, "--ctx-size=256"))
    assert got == summarize(meta, "llama.cpp", ["--ctx-size=256"])
    assert got.known and got.context_size == 256 and got.cpu_ram > got.weights


def test_task_without_metadata_is_unknown(tmp_path: Path) -> None:
    with disable_run_logger():
        got = estimate_resources.fn(None, config(tmp_path / "absent.gguf"))
    assert not got.known and got.reason == "model metadata could not be read on the server"
