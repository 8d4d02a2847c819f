"""Artifacts of gpufleet's runs (issue 18): every deploy and scale run publishes the placement
as a table artifact and the estimate as a markdown artifact; a hub pull reports a progress
artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import HUB_TOKEN, E2ECluster, wait_until
from tests.e2e.prefect_support import final_run_named, prefect_client
from tests.support import fake_hub
from tests.support.fake_hub import FakeHub


def artifacts(cluster: E2ECluster, key: str) -> list[Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with prefect_client(cluster) as c:
        return c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                sort=ArtifactSort.CREATED_DESC)


def table(artifact: Any) -> list[dict[str, Any]]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_deploy_and_scale_publish_placement_and_estimate(cluster: E2ECluster, tiny_gguf: Path) -> None:
    cluster.cli("deploy", "--name", "arts", "--local-path", str(tiny_gguf), "--replicas", "2")
    deploy = final_run_named(cluster, "deploy arts ×2")
    [placement, *_] = artifacts(cluster, "placement-arts")
    assert placement.type == "table" and placement.flow_run_id == deploy.id
    rows = table(placement)
    ids = sorted(i["id"] for i in cluster.api_instances("arts"))
    assert sorted(r["id"] for r in rows) == ids
    for row in rows:
        assert (row["worker"], row["GPUs"], row["state"]) == ("node-b", "node-b:0", "RUNNING")
        assert row["VRAM MiB"] > 0 and row["RAM MiB"] >= 0 and row["score"] is not None
    [estimate, *_] = artifacts(cluster, "estimate-arts")
    assert estimate.type == "markdown" and estimate.flow_run_id == deploy.id
    assert "| weights |" in estimate.data and "| KV cache |" in estimate.data

    cluster.cli("scale", "arts", "3")
    scale = final_run_named(cluster, "scale arts → 3")
    [placement, *_] = artifacts(cluster, "placement-arts")
    assert placement.flow_run_id == scale.id and len(table(placement)) == 3
    assert len(artifacts(cluster, "placement-arts")) >= 2  # the deployment's placement history
    cluster.cli("rm", "arts")


def test_a_hub_pull_reports_a_progress_artifact(cluster: E2ECluster, e2e_hub: FakeHub, tiny_gguf: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_hub, "CHUNK", 16 << 10)  # it throttles between chunks; the model is under 1 MiB
    e2e_hub.add_repo("org/slow-GGUF", {"slow-F32.gguf": tiny_gguf.read_bytes()}, token=HUB_TOKEN)
    e2e_hub.bytes_per_second = tiny_gguf.stat().st_size / 3  # about 3 s: several progress reports
    try:
        cluster.cli("deploy", "--name", "slowpull", "--hf", "org/slow-GGUF", "--file", "*F32*")
    finally:
        e2e_hub.bytes_per_second = None
    [inst] = cluster.api_instances("slowpull")
    progress = wait_until(lambda: artifacts(cluster, f"pull-{inst['name']}"), timeout=30,
                          what="a progress artifact of the pull")
    assert progress[0].type == "progress" and float(progress[0].data) == 100
    assert "pulled weights of" in progress[0].description
    cluster.cli("rm", "slowpull")
