"""Flows `scale`, `stop` (= 0 replicas) and `start` (= 1 replica)."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from flows._converge import ConvergeReport, converge
from tasks.server import set_replicas


def scale_to(name: str, replicas: int) -> ConvergeReport:
    set_replicas(name, replicas)
    return converge(name)


@flow(name="scale")
def scale(name: str, replicas: Annotated[int, Field(ge=0, le=1000)]) -> ConvergeReport:
    return scale_to(name, replicas)


@flow(name="stop")
def stop(name: str) -> ConvergeReport:
    """Scale to zero: every instance is stopped and its resources released."""
    return scale_to(name, 0)


@flow(name="start")
def start(name: str) -> ConvergeReport:
    """Start a stopped deployment with one replica."""
    return scale_to(name, 1)
