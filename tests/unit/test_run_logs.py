"""Per-run backend logs: rotation keeps the previous runs, bounded; headers mask secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.node import run_logs


def test_rotation_keeps_the_last_runs(tmp_path: Path) -> None:
    log = tmp_path / "7-m-abc.log"
    for run in range(1, 6):  # five runs: the current one and three before it are kept
        run_logs.rotate(log)
        log.write_text(f"run {run}\n")
    assert log.read_text() == "run 5\n"
    assert [run_logs.previous_path(log, n).read_text() for n in (1, 2, 3)] == ["run 4\n", "run 3\n", "run 2\n"]
    assert not run_logs.previous_path(log, 4).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["7-m-abc.log", "7-m-abc.log.1", "7-m-abc.log.2",
                                                          "7-m-abc.log.3"]


def test_nothing_to_keep(tmp_path: Path) -> None:
    log = tmp_path / "1-m.log"
    assert run_logs.rotate(log) is None
    log.touch()
    assert run_logs.rotate(log) is None and log.exists()  # an empty run is not kept


def test_a_kept_run_is_cut_to_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "1-m.log"
    log.write_bytes(b"x" * 1000 + b"the crash\n")
    moved = run_logs.rotate(log, max_bytes=10)
    assert moved is not None
    text = moved.read_text()
    assert text.endswith("the crash\n") and "1000 earlier bytes" in text


def test_previous_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        run_logs.previous_path(tmp_path / "1-m.log", 0)


def test_header_masks_secrets() -> None:
    text = run_logs.header(instance="m-1", run=3, worker="w1", runtime="process", gpus=[0, 1],
                           command=["llama-server", "--api-key", "sk-123", "--hf-token=hf_abc", "--port", "9000"],
                           env={"HF_TOKEN": "hf_abc", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert "sk-123" not in text and "hf_abc" not in text
    lines = text.splitlines()
    assert lines[0] == "[gpufleet] starting on w1 (process): llama-server --api-key **** --hf-token=**** --port 9000"
    assert lines[1].startswith("[gpufleet] run 3 of m-1, started ") and lines[1].endswith("GPUs 0, 1")
    assert lines[2] == "[gpufleet] environment: CUDA_VISIBLE_DEVICES=0,1 HF_TOKEN=****"


def test_node_log_api_serves_previous_runs(tmp_path: Path) -> None:
    """The node's log API (what `gpufleet logs ID --previous` reaches through the server)."""
    from fastapi.testclient import TestClient

    from gpufleet.node.context import NodeContext
    from gpufleet.node.log_server import create_log_app
    from gpufleet.node.registry import BackendRegistry

    node = NodeContext(name="w1", home=tmp_path, bind_host="127.0.0.1")
    log = node.logs_dir / "4-m-abc.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("first run\ncrashed\n")
    run_logs.rotate(log)
    log.write_text("second run\n")
    api = TestClient(create_log_app(node, BackendRegistry(tmp_path / "backends")))
    assert api.get("/v1/instances/4/logs").text == "second run\n"
    assert api.get("/v1/instances/4/logs", params={"previous": 1}).text == "first run\ncrashed\n"
    assert api.get("/v1/instances/4/logs", params={"previous": 1, "tail": 1}).text == "crashed\n"
    missing = api.get("/v1/instances/4/logs", params={"previous": 2})
    assert missing.status_code == 404 and "not been restarted 2 time(s)" in missing.json()["detail"]
    assert api.get("/v1/instances/4/logs", params={"previous": 9}).status_code == 422


def test_notes_of_the_pull_go_under_the_next_header() -> None:
    from gpufleet.node import run_logs

    for n in range(run_logs.MAX_NOTES + 5):
        run_logs.note(99, f"DOWNLOADING {n} %")
    run_logs.note(99, "weights ready")
    notes = run_logs.take_notes(99)
    assert len(notes) == run_logs.MAX_NOTES and notes[-1] == "weights ready" and notes[0] == "DOWNLOADING 0 %"
    assert run_logs.take_notes(99) == []  # taken once: the next run starts clean
    text = run_logs.header(instance="m-1", run=1, worker="w", runtime="process", gpus=[], command=["x"], env={},
                           notes=["weights ready"])
    assert text.splitlines()[-1] == "[gpufleet] weights ready"
