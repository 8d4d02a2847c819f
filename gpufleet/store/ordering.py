"""A later request always wins over an earlier one that arrives late.

Why: requests reach the server out of order (a client's request stuck behind a slow
database, a client retrying a timed-out request after the user already sent a newer one),
and the last one applied used to win. So each request that sets a deployment's replica count
or configuration says when it was issued (`Gpufleet-Issued-At`, set once by the client and
kept across retries; the server's clock when absent), the deployment keeps the issue time of
the request that last set each, and a request issued before that is refused (HTTP 412)
instead of undoing the newer one. Clients on different machines are ordered by their clocks
(keep them synchronised, e.g. NTP); a retry of the same request carries the same time and is
answered from the request log anyway.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpufleet.store.models import DeploymentRow

Field = Literal["replicas", "config"]


class Superseded(RuntimeError):
    """A newer request already set this; the message says which and when."""


def parse_issued_at(raw: str | None) -> datetime | None:
    """The header's value (ISO 8601 with a time zone), or None; ValueError when malformed."""
    if raw is None or raw == "":
        return None
    value = datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise ValueError(f"Gpufleet-Issued-At {raw!r} has no time zone; send UTC, e.g. 2026-12-05T08:00:00.123456+00:00")
    return value.astimezone(timezone.utc)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def admit(row: DeploymentRow, field: Field, issued_at: datetime, what: str) -> None:
    """Record that the request issued at `issued_at` sets `field`, or raise Superseded when a
    request issued later already did. `what` describes the current value for the message."""
    column = f"{field}_issued_at"
    current = getattr(row, column)
    if current is not None and _utc(issued_at) < _utc(current):
        raise Superseded(
            f"a newer request (issued {_utc(current).isoformat()}) already set {row.name!r} to {what}; "
            f"this one, issued {_utc(issued_at).isoformat()}, arrived late and was not applied. "
            f"Check `gpufleet ls` and send it again if it is still wanted")
    setattr(row, column, _utc(issued_at))


def admit_by_name(session: Session, name: str, field: Field, issued_at: datetime) -> None:
    """`admit` for the deployment called `name`, in the caller's transaction (an unknown
    name is left to the operation itself, which answers 404)."""
    row = session.scalar(select(DeploymentRow).where(DeploymentRow.name == name).with_for_update())
    if row is None:
        return
    what = f"{row.replicas} replica(s)" if field == "replicas" else f"the configuration of generation {row.generation}"
    admit(row, field, issued_at, what)
