"""Helpers for the Prefect-native journeys: read the cluster's Prefect server, and make a
schedule fire through Prefect's own scheduling path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.e2e.conftest import E2ECluster, wait_until


@contextmanager
def prefect_client(cluster: E2ECluster) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api_url}):
        with get_client(sync_client=True) as client:
            yield client


def runs_named(cluster: E2ECluster, name: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with prefect_client(cluster) as c:
        return c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def final_run_named(cluster: E2ECluster, name: str, timeout: float = 180) -> Any:
    """The (first) run with this name, once it is in a final state."""
    def final() -> Any:
        runs = [r for r in runs_named(cluster, name) if r.state is not None and r.state.is_final()]
        return runs[0] if runs else None
    try:
        return wait_until(final, timeout=timeout, interval=0.5, what=f"a final flow run named {name!r}")
    except AssertionError as exc:
        states = [(str(r.id), r.state.type.value if r.state else None, r.state.message if r.state else None)
                  for r in runs_named(cluster, name)]
        raise AssertionError(f"{exc}; runs named {name!r}: {states}") from None


def fire_schedules(cluster: E2ECluster, prefect_deployment: str, parameters: dict[str, Any]) -> Any:
    """What Prefect's scheduler does when a schedule's time comes: `POST /deployments/{id}/schedule`
    (the scheduler service's own ``schedule_runs``) over the past eight days, one run per schedule,
    so the run it makes is due at once, with the schedule's parameters. Returns that flow run
    (the one whose parameters are ``parameters``) once it is final."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter

    with prefect_client(cluster) as c:
        dep = c.read_deployment_by_name(prefect_deployment)
        before = {r.id for r in c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))}
        now = datetime.now(timezone.utc)
        c.request("POST", "/deployments/{id}/schedule", path_params={"id": dep.id},
                  json={"start_time": (now - timedelta(days=8)).isoformat(), "end_time": now.isoformat(),
                        "max_runs": 1})

        def made() -> Any:
            runs = c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
            new = [r for r in runs if r.id not in before and r.parameters == parameters]
            return new[0] if new else None

        run = wait_until(made, timeout=30, what=f"a scheduled run of {prefect_deployment} with {parameters}")

        def final() -> Any:
            r = c.read_flow_run(run.id)
            return r if r.state is not None and r.state.is_final() else None

        return wait_until(final, timeout=300, interval=0.5, what=f"scheduled run {run.id} to finish")
