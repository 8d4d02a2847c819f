"""Flows `scale`, `stop` (= 0 replicas) and `start` (= 1 replica)."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from flows._artifacts import publish
from flows._cancel import cancellable
from flows._converge import ConvergeReport, converge
from flows._names import named, scale_name, unless_gone
from flows._serial import one_scale_at_a_time
from tasks.server import set_replicas


def scale_to(name: str, replicas: int, issued_at: str | None = None) -> ConvergeReport:
    """Record the count, then converge; a deployment deleted meanwhile ends the run Completed
    with that message (nothing to do)."""
    def run() -> ConvergeReport:
        with one_scale_at_a_time(name):
            set_replicas(name, replicas, issued_at)
            report = converge(name)
        publish(name, report)
        return report

    return cancellable(lambda: unless_gone(f"deployment {name}", run))


@flow(name="scale", flow_run_name=scale_name)
def scale(name: str, replicas: Annotated[int, Field(ge=0, le=1000)],
          issued_at: Annotated[str | None, Field(description="when the scale was asked for (ISO 8601); a scale "
                                                             "asked for later wins. Default: now")] = None,
          ) -> ConvergeReport:
    return scale_to(name, replicas, issued_at)


@flow(name="stop", flow_run_name=named("stop"))
def stop(name: str) -> ConvergeReport:
    """Scale to zero: every instance is stopped and its resources released."""
    return scale_to(name, 0)


@flow(name="start", flow_run_name=named("start"))
def start(name: str) -> ConvergeReport:
    """Start a stopped deployment with one replica."""
    return scale_to(name, 1)
