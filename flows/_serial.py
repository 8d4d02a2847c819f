"""One scale at a time per deployment, through a Prefect global concurrency limit
``gpufleet-scale-<name>`` of 1 slot (created on first use; visible and adjustable under
Concurrency in the Prefect UI).

Two scale (stop, start) runs of one deployment never interleave: the second waits for the
first's slot. The last requested count still wins: the server records the count of each
request in issue order (gpufleet.store.ordering), and a run whose request was overtaken
converges to the newer count. The slot is a lease: a run that dies holding it frees it after
LEASE_S (Prefect's shortest).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_client, get_run_logger
from prefect.concurrency.sync import concurrency

LEASE_S = 60.0


def limit_name(deployment: str) -> str:
    return f"gpufleet-scale-{deployment}"


def ensure_limit(name: str) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass  # another run made it meanwhile


@contextmanager
def one_scale_at_a_time(deployment: str) -> Iterator[None]:
    name = limit_name(deployment)
    ensure_limit(name)
    get_run_logger().info("waiting for the concurrency slot %s", name)
    with concurrency(name, occupy=1, lease_duration=LEASE_S, strict=True):
        yield
