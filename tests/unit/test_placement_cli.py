"""`gpufleet plan --cluster FILE`: the dry run against a snapshot file, no server needed."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from gpufleet.cli.plan_cmd import register
from tests.unit.test_placement import FIXTURES

app = typer.Typer()
register(app)
runner = CliRunner()


def run(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args))


def test_plan_against_a_snapshot_file(tiny_gguf: Path) -> None:
    out = run("plan", "--local-path", str(tiny_gguf), "--replicas", "3", "--json",
              "--cluster", str(FIXTURES / "two-workers-a100.json"))
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    # spread: node-b (empty), node-a (node-b has a replica), then node-b again (node-a is fuller)
    assert [r["placement"]["worker"] for r in result["replicas"]] == ["node-b", "node-a", "node-b"]
    assert all(r["placement"]["stage"] == "single-gpu" for r in result["replicas"])


def test_plan_table_and_unplaced_exit_status(tiny_gguf: Path) -> None:
    out = run("plan", "--local-path", str(tiny_gguf), "--replicas", "2", "--gpu", "node-b:0",
              "--cluster", str(FIXTURES / "two-workers-a100.json"))
    assert out.exit_code == 3, out.output  # the second replica has no selected GPU left
    assert "1 of 2 replica(s) fit" in out.stdout
    text = " ".join(out.stdout.split())  # the table wraps long reasons
    assert "node-b: its selected GPUs are taken by other replicas of this deployment" in text


def test_plan_refuses_bad_input(tiny_gguf: Path, tmp_path: Path) -> None:
    cluster = str(FIXTURES / "8xH100-80G.json")
    bad_selector = run("plan", "--local-path", str(tiny_gguf), "--worker-selector", "gpu in ()", "--cluster", cluster)
    assert bad_selector.exit_code == 2 and "must be non-empty values" in bad_selector.output
    bad_gpu = run("plan", "--local-path", str(tiny_gguf), "--gpu", "h100", "--cluster", cluster)
    assert bad_gpu.exit_code == 2 and "use WORKER:INDEX" in bad_gpu.output
    broken = tmp_path / "snap.json"
    broken.write_text('{"workers": [{"name": "x"}]}')
    bad_snapshot = run("plan", "--local-path", str(tiny_gguf), "--cluster", str(broken))
    assert bad_snapshot.exit_code == 2 and "cluster snapshot" in bad_snapshot.output and "memory_total" in bad_snapshot.output


def test_plan_from_a_spec_file(tiny_gguf: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "t", "replicas": 2, "source": {"local_path": str(tiny_gguf)},
                                "placement": {"strategy": "binpack"}}))
    out = run("plan", str(spec), "--json", "--cluster", str(FIXTURES / "8xH100-80G.json"))
    assert out.exit_code == 0, out.output
    assert [r["placement"]["gpu_indexes"] for r in json.loads(out.stdout)["replicas"]] == [[0], [0]]
