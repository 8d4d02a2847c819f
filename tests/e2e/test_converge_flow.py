"""The reconcile recipe at flow level: plan → dispatch → wait, run as a Prefect flow from this
process against the real cluster (Prefect server, gpufleet server, two node agents serving
real llama.cpp servers), with every request it sends to the gpufleet server counted."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from flows._converge import ConvergeReport, converge
from gpufleet.client import ApiError, GpufleetClient
from gpufleet.core.schemas import DeploymentSpec, ModelSource
from tests.e2e.conftest import E2ECluster


@flow(name="converge-under-test")
def converge_flow(name: str) -> ConvergeReport:
    return converge(name)


@contextmanager
def against(cluster: E2ECluster) -> Iterator[Counter[str]]:
    """Point this process at the cluster; count the gpufleet requests made meanwhile (by route)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    calls: Counter[str] = Counter()
    original = GpufleetClient._request_once

    def counted(self: GpufleetClient, method: str, path: str, **kwargs: Any) -> Any:
        calls[f"{method} {path.split('/v1/')[-1].split('/')[0]}"] += 1
        return original(self, method, path, **kwargs)

    saved = os.environ.get("GPUFLEET_SERVER_URL")
    os.environ["GPUFLEET_SERVER_URL"] = cluster.api_url
    GpufleetClient._request_once = counted  # type: ignore[method-assign]
    try:
        with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api_url}):
            yield calls
    finally:
        GpufleetClient._request_once = original  # type: ignore[method-assign]
        if saved is None:
            os.environ.pop("GPUFLEET_SERVER_URL", None)
        else:
            os.environ["GPUFLEET_SERVER_URL"] = saved


def record(cluster: E2ECluster, name: str, replicas: int, model: Path) -> None:
    with GpufleetClient(cluster.api_url) as c:
        c.register_deployment(DeploymentSpec(name=name, replicas=replicas, source=ModelSource(local_path=str(model))))


def set_replicas(cluster: E2ECluster, name: str, replicas: int) -> None:
    with GpufleetClient(cluster.api_url) as c:
        c.scale(name, replicas, trigger=False)


def states(cluster: E2ECluster, name: str) -> list[str]:
    return [i["state"] for i in cluster.instances(name) if not i["deleting"]]


@pytest.mark.parametrize("replicas", [1, 3])
def test_converge_serves_with_a_constant_number_of_server_calls(cluster: E2ECluster, tiny_gguf: Path,
                                                               replicas: int) -> None:
    name = f"conv{replicas}"
    record(cluster, name, replicas, tiny_gguf)
    with against(cluster) as calls:
        report = converge_flow(name)
    assert len(report.created) == replicas and set(report.placed) == set(report.created)
    assert report.unplaced == {} and report.removed == []
    assert report.node_runs and set(report.node_runs.values()) == {"Completed"}
    assert states(cluster, name) == ["RUNNING"] * replicas
    # one apply-plan for everything; no per-instance reads or reports from the control flow
    assert calls == Counter({"POST internal": 1}), calls

    set_replicas(cluster, name, 0)
    with against(cluster) as calls:
        down = converge_flow(name)
    assert sorted(down.removed) == sorted(report.created) and states(cluster, name) == []
    assert calls == Counter({"POST internal": 2}), calls  # plan (stop), then plan (forget the stopped)

    with GpufleetClient(cluster.api_url) as c:
        c.mark_deployment_deleting(name)
    with against(cluster):
        converge_flow(name)
    with GpufleetClient(cluster.api_url) as c, pytest.raises(ApiError) as gone:
        c.get_deployment(name)
    assert gone.value.status == 404


def test_converge_of_an_unplaceable_deployment_reports_why_and_starts_nothing(cluster: E2ECluster,
                                                                             tiny_gguf: Path) -> None:
    with GpufleetClient(cluster.api_url) as c:
        c.register_deployment(DeploymentSpec(name="nowhere", replicas=2, source=ModelSource(local_path=str(tiny_gguf)),
                                             placement={"worker_selector": ["zone=mars"]}))
    with against(cluster) as calls:
        report = converge_flow("nowhere")
    assert len(report.unplaced) == 2 and report.placed == {} and report.node_runs == {}
    assert all("zone=mars" in reason for reason in report.unplaced.values()), report.unplaced
    assert calls == Counter({"POST internal": 1})
    with GpufleetClient(cluster.api_url) as c:
        c.mark_deployment_deleting("nowhere")
    with against(cluster):
        converge_flow("nowhere")
