"""Schedule rules of a deployment: "at this cron time, in this time zone, scale to N" or
"… restart it replica by replica". Each rule is a Prefect schedule on the ``scale`` (or
``restart-deployment``) Prefect deployment with the parameters filled in; these are the
shapes the REST API and the CLI exchange (the server validates the cron and the zone)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

#: The time zone of a rule that names none. Said by the CLI and the API docs, never implied.
DEFAULT_TIMEZONE = "UTC"

ScheduleAction = Literal["scale", "restart"]


class ScheduleRequest(BaseModel):
    """A new rule: exactly one of ``replicas`` (scale to it) and ``restart``."""

    cron: str = Field(description='cron expression, e.g. "0 8 * * 1-5"')
    timezone: str = Field(default=DEFAULT_TIMEZONE, description="IANA time zone, e.g. Europe/Paris (default UTC)")
    replicas: int | None = Field(default=None, ge=0, le=1000, description="scale to this many replicas")
    restart: bool = Field(default=False, description="restart the replicas one at a time instead")

    @model_validator(mode="after")
    def _one_action(self) -> ScheduleRequest:
        if self.restart == (self.replicas is not None):
            raise ValueError("give either replicas (a scaling rule) or restart=true (a restart rule), not both")
        return self

    @property
    def action(self) -> ScheduleAction:
        return "restart" if self.restart else "scale"

    def parameters(self, name: str) -> dict[str, object]:
        """The flow parameters the Prefect schedule carries."""
        return {"name": name} if self.restart else {"name": name, "replicas": self.replicas}


class ScheduleView(BaseModel):
    """A rule as Prefect holds it (made by gpufleet, the Prefect UI or its API alike)."""

    id: str
    deployment: str
    action: ScheduleAction
    replicas: int | None = None
    cron: str | None = Field(default=None, description="None for a non-cron Prefect schedule (interval, rrule)")
    schedule: str = Field(description="the schedule in words, whatever its kind")
    timezone: str | None = None
    active: bool = True
    next_run: datetime | None = None
    prefect_deployment: str = Field(description="the Prefect deployment the schedule is on, e.g. scale/gpufleet")
