"""Placement: the server runs the pure placement under its lock and records the claim."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks._connection import connect
from gpufleet.core.schemas import InstanceView
from tasks._retry import NETWORK_TASK


@task(name="select-gpus", **NETWORK_TASK)
def select_gpus(instance_ids: list[int]) -> list[InstanceView]:
    """All of a deployment's instances to place in one call: one transaction and one
    read of the cluster on the server, instead of one per instance."""
    with connect() as c:
        placed = c.place_many(instance_ids)
    logger = get_run_logger()
    for inst in placed:
        logger.info("instance %s: %s — %s", inst.name, inst.state, inst.state_message)
    return placed
