"""gpufleet's schedule rules as Prefect deployment schedules.

A rule is nothing but a Prefect schedule on the ``scale/gpufleet`` (or
``restart-deployment/gpufleet``) Prefect deployment whose parameters name the gpufleet
deployment: gpufleet stores nothing of its own, so a schedule made or edited in the Prefect
UI or API is a rule like any other, and Prefect's scheduler is what fires them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from gpufleet import orchestration
from gpufleet.core.schedules import ScheduleAction, ScheduleRequest, ScheduleView

#: Prefect flow carrying each action.
FLOWS: dict[ScheduleAction, str] = {"scale": "scale", "restart": "restart-deployment"}


class InvalidSchedule(ValueError):
    """The cron expression or the time zone is not one Prefect accepts."""


class UnknownSchedule(LookupError):
    pass


def cron_schedule(req: ScheduleRequest) -> Any:
    """Prefect's own CronSchedule, so that what it refuses is refused here, before anything is written."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        return CronSchedule(cron=req.cron, timezone=req.timezone)
    except ValidationError as exc:
        raise InvalidSchedule("; ".join(str(e.get("ctx", {}).get("error") or e["msg"]) for e in exc.errors())) from exc


def _next_run(cron: str, timezone: str | None) -> datetime | None:
    from prefect._vendor.croniter import croniter

    try:
        return croniter(cron, datetime.now(ZoneInfo(timezone or "UTC"))).get_next(datetime)
    except Exception:  # noqa: BLE001 - a schedule Prefect accepted but this cannot read: no next time shown
        return None


def _describe(schedule: Any) -> tuple[str | None, str, str | None]:
    """(cron or None, the schedule in words, its time zone)."""
    cron = getattr(schedule, "cron", None)
    tz = getattr(schedule, "timezone", None)
    if cron:
        return cron, f"cron {cron} ({tz or 'UTC'})", tz
    interval = getattr(schedule, "interval", None)
    if interval is not None:
        return None, f"every {interval} from {getattr(schedule, 'anchor_date', '')}", tz
    return None, f"rrule {getattr(schedule, 'rrule', '?')}", tz


def _view(action: ScheduleAction, s: Any) -> ScheduleView | None:
    params = s.parameters or {}
    if not params.get("name"):
        return None  # a schedule not naming a gpufleet deployment (the flow's run would be refused)
    cron, words, tz = _describe(s.schedule)
    return ScheduleView(
        id=str(s.id), deployment=params["name"], action=action,
        replicas=params.get("replicas") if action == "scale" else None,
        cron=cron, schedule=words, timezone=tz, active=bool(s.active),
        next_run=_next_run(cron, tz) if cron and s.active else None,
        prefect_deployment=orchestration.deployment_name(FLOWS[action]),
    )


class PrefectSchedules:
    """Reads and writes the rules through the Prefect API (the server's PREFECT_API_URL)."""

    def _deployment_id(self, client: Any, action: ScheduleAction) -> UUID:
        return client.read_deployment_by_name(orchestration.deployment_name(FLOWS[action])).id

    def add(self, name: str, req: ScheduleRequest) -> ScheduleView:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import DeploymentScheduleCreate

        schedule = cron_schedule(req)
        with get_client(sync_client=True) as client:
            dep_id = self._deployment_id(client, req.action)
            created = client.create_deployment_schedules(dep_id, [DeploymentScheduleCreate(
                schedule=schedule, active=True, parameters=req.parameters(name))])
        view = _view(req.action, created[0])
        assert view is not None
        return view

    def list(self, name: str | None = None) -> list[ScheduleView]:
        from prefect.client.orchestration import get_client

        views: list[ScheduleView] = []
        with get_client(sync_client=True) as client:
            for action in FLOWS:
                for s in client.read_deployment_schedules(self._deployment_id(client, action)):
                    view = _view(action, s)
                    if view is not None and (name is None or view.deployment == name):
                        views.append(view)
        return sorted(views, key=lambda v: (v.deployment, v.next_run is None, v.next_run or datetime.min, v.id))

    def remove(self, schedule_id: str) -> ScheduleView:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            for action in FLOWS:
                dep_id = self._deployment_id(client, action)
                for s in client.read_deployment_schedules(dep_id):
                    if str(s.id) == schedule_id:
                        view = _view(action, s)
                        if view is None:
                            raise UnknownSchedule(f"schedule {schedule_id} names no gpufleet deployment")
                        client.delete_deployment_schedule(dep_id, s.id)
                        return view
        raise UnknownSchedule(f"no schedule {schedule_id} on the scale or restart-deployment Prefect deployments")
