"""The cluster's state as Prometheus gauges, read from the database when Prometheus scrapes.

A custom collector rather than gauges kept up to date by every writer: the database is the
one truth, and a scrape every 15 s costs three small queries (deployments' instances by
state, instances' restarts and placements, workers' GPUs), whatever the request rate.

- ``gpufleet_instances{deployment, state}``: instances by state (PENDING … RUNNING, ERROR);
  ``gpufleet_instances_deleting{deployment}``: those marked for removal (being drained/stopped)
- ``gpufleet_instance_restarts{deployment, instance}``: restarts of each live instance
- ``gpufleet_gpu_memory_total_bytes{worker, gpu}`` and ``gpufleet_gpu_memory_claimed_bytes{worker, gpu}``:
  what placement counts as taken (Σ claims of placed instances, distributed parts included)
- ``gpufleet_instances_unplaced{deployment}``: placement failures now — PENDING instances that
  placement could not put anywhere (their state message says why, per worker)
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session

from gpufleet.core.states import InstanceState
from gpufleet.store.models import DeploymentRow, InstanceRow, WorkerRow

log = logging.getLogger(__name__)


class ClusterCollector(Collector):
    def __init__(self, session: Callable[[], AbstractContextManager[Session]]) -> None:
        self._session = session

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # collected at scrape time only (registering must not read the database)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self._session() as s:
                instances = s.execute(
                    select(DeploymentRow.name, InstanceRow.name, InstanceRow.state, InstanceRow.deleting,
                           InstanceRow.restart_count, InstanceRow.placement, InstanceRow.state_message)
                    .join(DeploymentRow, InstanceRow.deployment_id == DeploymentRow.id)).all()
                workers = s.execute(select(WorkerRow.name, WorkerRow.gpus)).all()
        except Exception:  # noqa: BLE001 - a scrape must answer even when the database does not
            log.exception("could not read the cluster's state for /metrics")
            return
        yield from _instance_families(instances)
        yield from _gpu_families(instances, workers)


def _instance_families(instances: list) -> Iterator[GaugeMetricFamily]:  # noqa: ANN001 - rows
    by_state = GaugeMetricFamily("gpufleet_instances", "Instances by deployment and state",
                                 labels=["deployment", "state"])
    deleting = GaugeMetricFamily("gpufleet_instances_deleting",
                                 "Instances marked for removal (draining, then stopped)", labels=["deployment"])
    restarts = GaugeMetricFamily("gpufleet_instance_restarts", "Restarts of each instance since its restart "
                                 "count last started over", labels=["deployment", "instance"])
    unplaced = GaugeMetricFamily("gpufleet_instances_unplaced", "PENDING instances placement could not put on "
                                 "any worker (placement failures now)", labels=["deployment"])
    states: Tally[tuple[str, str]] = Tally()
    removing: Tally[str] = Tally()
    failed: Tally[str] = Tally()
    for deployment, name, state, is_deleting, restart_count, placement, message in instances:
        states[(deployment, state)] += 1
        if is_deleting:
            removing[deployment] += 1
        restarts.add_metric([deployment, name], float(restart_count or 0))
        if state == InstanceState.PENDING.value and placement is None and message:
            failed[deployment] += 1
    for (deployment, state), n in sorted(states.items()):
        by_state.add_metric([deployment, state], n)
    for deployment, n in sorted(removing.items()):
        deleting.add_metric([deployment], n)
    for deployment, n in sorted(failed.items()):
        unplaced.add_metric([deployment], n)
    yield from (by_state, deleting, restarts, unplaced)


def _gpu_families(instances: list, workers: list) -> Iterator[GaugeMetricFamily]:  # noqa: ANN001 - rows
    total = GaugeMetricFamily("gpufleet_gpu_memory_total_bytes", "GPU memory of each worker's GPU",
                              labels=["worker", "gpu"])
    claimed = GaugeMetricFamily("gpufleet_gpu_memory_claimed_bytes",
                                "GPU memory claimed by placed instances on each GPU", labels=["worker", "gpu"])
    claims: Tally[tuple[str, int]] = Tally()
    for *_, placement, _message in instances:
        if not placement:
            continue
        for part in (placement, *placement.get("parts", ())):
            for gpu, amount in (part.get("vram_claim") or {}).items():
                claims[(part["worker"], int(gpu))] += int(amount)
    for worker, gpus in workers:
        for gpu in gpus or ():
            index = int(gpu["index"])
            total.add_metric([worker, str(index)], float(gpu.get("memory_total", 0)))
            claimed.add_metric([worker, str(index)], float(claims.get((worker, index), 0)))
    yield from (total, claimed)
