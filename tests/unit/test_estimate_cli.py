"""`gpufleet estimate` on a generated GGUF, through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gpufleet.cli import estimate_cmd
from gpufleet.core.estimation import EstimateOptions, estimate
from gpufleet.core.estimation.gpu_types import GiB, parse_gpu_type
from gpufleet.demo.tiny_model import TinyModelShape, write_tiny_llama_gguf
from gpufleet.sources.local import read_local_metadata

MiB = 1 << 20
SHAPE = TinyModelShape(n_layers=4, hidden=256, n_heads=8, n_kv_heads=2, ffn=512, context_length=2048, dtype="f16")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", SHAPE)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so that "estimate" is a subcommand as in gpufleet's CLI
        pass

    estimate_cmd.register(app)
    return app


def run(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["estimate", *args])
    return result.exit_code, result.output


def test_table_shows_devices_breakdown_and_fit(app: typer.Typer, model: Path) -> None:
    code, out = run(app, "--local-path", str(model), "--gpus", "2", "--fits", "A100-80G:2",
                    "--backend-param=--ctx-size=1024")
    assert code == 0, out
    for text in ("DEVICE", "WEIGHTS", "KV CACHE", "COMPUTE", "OUTPUT", "OVERHEAD", "cpu (RAM)", "gpu:0 (VRAM)",
                 "gpu:1 (VRAM)", "context 1024", "layers on GPUs: 5/5", "fits 2 x A100-80G (80 GiB each): yes"):
        assert text in out, text


def test_json_is_the_pure_estimate(app: typer.Typer, model: Path) -> None:
    code, out = run(app, "--local-path", str(model), "--tensor-split", "3,1", "--gpu-layers", "4", "--json",
                    "--backend-param=--ctx-size=512", "--backend-param=--parallel=2")
    assert code == 0, out
    data = json.loads(out)
    meta = read_local_metadata(model)[1]
    est = estimate(meta, EstimateOptions(backend_params=("--ctx-size=512", "--parallel=2"),
                                         gpu_memory=(parse_gpu_type("A100-80G").memory,) * 2,
                                         tensor_split=(3.0, 1.0), gpu_layers=4))
    assert data["ram"] == est.ram and data["vram"] == list(est.vram) and data["gpu_layers"] == 4
    # 4 of 5 llama.cpp layers offloaded, split 3:1 -> k/4 < 0.75 for k = 0..2: GPU 0 gets 3, GPU 1 gets 1
    assert [d["layers"] for d in data["devices"]] == [1, 3, 1]


def test_cpu_only_by_default(app: typer.Typer, model: Path) -> None:
    code, out = run(app, "--local-path", str(model), "--json")
    data = json.loads(out)
    assert code == 0 and data["vram"] == [] and [d["device"] for d in data["devices"]] == ["cpu"]


def test_fit_reports_the_most_layers_that_fit(app: typer.Typer, model: Path) -> None:
    meta = read_local_metadata(model)[1]
    full = estimate(meta, EstimateOptions(gpu_memory=(GiB,))).vram[0]
    card = f"SMALL-{(full - MiB) / GiB:.6f}G"  # 1 MiB short of the full offload
    code, out = run(app, "--local-path", str(model), "--fits", f"{card}:1", "--json")
    data = json.loads(out)
    best = data["fits"]["best_gpu_layers"]
    assert code == 0 and data["fits"]["fits"] is False and best is not None
    memory = parse_gpu_type(card).memory
    assert estimate(meta, EstimateOptions(gpu_memory=(memory,), gpu_layers=best)).vram[0] <= memory
    assert best == 4 or estimate(meta, EstimateOptions(gpu_memory=(memory,), gpu_layers=best + 1)).vram[0] > memory


@pytest.mark.parametrize(("args", "message"), [
    (("--gpus", "2", "--tensor-split", "1,1,1"), "name different GPU counts"),
    (("--fits", "Z9:1"), "unknown GPU type 'Z9'"),
    (("--fits", "A100-80G:x"), "must be a positive integer"),
    (("--backend-param=--cache-type-k=q9",), "--cache-type-k must be one of"),
    (("--backend", "tgi"), "--backend must be one of"),
    (("--tensor-split", "a,b"), "--tensor-split takes proportions"),
    (("--hf", "org/x"), "exactly one of"),
])
def test_bad_input_is_refused_with_a_fix(app: typer.Typer, model: Path, args: tuple[str, ...], message: str) -> None:
    code, out = run(app, "--local-path", str(model), *args)
    assert code == 2 and message in out, out


def test_missing_file_says_so(app: typer.Typer, tmp_path: Path) -> None:
    code, out = run(app, "--local-path", str(tmp_path / "absent.gguf"))
    assert code == 1 and "absent.gguf" in out


@pytest.mark.parametrize(("spec", "name", "gib", "count"), [
    ("A100-80G:2", "A100-80G", 80, 2),
    ("L4-24G", "L4-24G", 24, 1),  # count defaults to 1
    ("A100-40GB:1", "A100-40GB", 40, 1),
    ("T4", "T4", 16, 1),  # bare names from the table, any case; T4 is nominal (not measured)
])
def test_gpu_types(spec: str, name: str, gib: int, count: int) -> None:
    t = parse_gpu_type(spec)
    assert (t.name, t.memory, t.count) == (name, gib * GiB, count)


@pytest.mark.parametrize(("spec", "mib", "count", "source"), [
    # CUDA's total on the measured H200: NVML 143,771 MiB - 615 MiB kept by the driver
    # ~= 143,155 MiB = 139.8 GiB (not the 141 GB on the box)
    ("h200", 143_155, 1, "measured"),
    # vLLM's logged total on an H100 80GB: 79.18 GiB x 1024 = 81,080 MiB
    ("H100:8", 81_080, 8, "vLLM's logged total"),
    ("A100", 80 * 1024, 1, "nominal"),
])
def test_bare_gpu_names_use_what_cuda_reports(spec: str, mib: int, count: int, source: str) -> None:
    from gpufleet.core.estimation.gpu_types import source_of

    t = parse_gpu_type(spec)
    assert (t.memory, t.count) == (mib << 20, count)
    assert source_of(t.name).startswith(source)
