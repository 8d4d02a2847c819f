"""REST routes of schedule rules (``gpufleet schedule add|ls|rm``): scale or restart a
deployment at cron times. The rules live in Prefect (:mod:`gpufleet.server.prefect_schedules`);
these routes check the input — the deployment exists, the cron and the time zone are valid,
replicas ≥ 0 — before anything is written, so bad input leaves nothing behind."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Query

from gpufleet.core.schedules import ScheduleRequest, ScheduleView
from gpufleet.server.prefect_schedules import InvalidSchedule, PrefectSchedules, UnknownSchedule, cron_schedule
from gpufleet.store import repository as repo

log = logging.getLogger(__name__)


def _prefect_unavailable(exc: Exception) -> HTTPException:
    log.exception("Prefect refused a schedule request")
    return HTTPException(503, f"could not reach Prefect's schedules: {type(exc).__name__}: {exc}")


def add_schedule_routes(app: FastAPI, state: Any, schedules: PrefectSchedules | None = None) -> None:
    rules = schedules or PrefectSchedules()

    def known(name: str) -> None:
        with state.session() as s:
            repo.get_deployment(s, name)  # 404 for an unknown deployment

    @app.post("/v1/deployments/{name}/schedules", status_code=201)
    def add_schedule(name: str, body: ScheduleRequest) -> ScheduleView:
        """Add a rule: at ``cron`` in ``timezone`` (default UTC), scale to ``replicas`` or
        restart the replicas one at a time (``restart: true``). A manual scale between two
        rules holds until the next rule fires."""
        known(name)
        try:
            cron_schedule(body)
        except InvalidSchedule as exc:
            raise HTTPException(400, str(exc)) from exc
        try:
            return rules.add(name, body)
        except Exception as exc:  # noqa: BLE001 - any Prefect failure is a 503 here
            raise _prefect_unavailable(exc) from exc

    @app.get("/v1/deployments/{name}/schedules")
    def deployment_schedules(name: str) -> list[ScheduleView]:
        known(name)
        return list_schedules(deployment=name)

    @app.get("/v1/schedules")
    def list_schedules(deployment: str | None = Query(default=None)) -> list[ScheduleView]:
        try:
            return rules.list(deployment)
        except Exception as exc:  # noqa: BLE001
            raise _prefect_unavailable(exc) from exc

    @app.delete("/v1/schedules/{schedule_id}")
    def remove_schedule(schedule_id: str) -> ScheduleView:
        try:
            return rules.remove(schedule_id)
        except UnknownSchedule as exc:
            raise HTTPException(404, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001
            raise _prefect_unavailable(exc) from exc
