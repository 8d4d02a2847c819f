"""Flows `scale`, `stop` (= 0 replicas) and `start` (= 1 replica)."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from flows._converge import ConvergeReport, converge
from tasks.server import set_replicas


def scale_to(name: str, replicas: int, issued_at: str | None = None) -> ConvergeReport:
    set_replicas(name, replicas, issued_at)
    return converge(name)


@flow(name="scale")
def scale(name: str, replicas: Annotated[int, Field(ge=0, le=1000)],
          issued_at: Annotated[str | None, Field(description="when the scale was asked for (ISO 8601); a scale "
                                                             "asked for later wins. Default: now")] = None,
          ) -> ConvergeReport:
    return scale_to(name, replicas, issued_at)


@flow(name="stop")
def stop(name: str) -> ConvergeReport:
    """Scale to zero: every instance is stopped and its resources released."""
    return scale_to(name, 0)


@flow(name="start")
def start(name: str) -> ConvergeReport:
    """Start a stopped deployment with one replica."""
    return scale_to(name, 1)
