"""Worker readiness from heartbeats (shared by the repository and the ledger)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from gpufleet.store.models import WorkerRow


def is_ready(row: WorkerRow, now: datetime, timeout: timedelta) -> bool:
    """Ready = a heartbeat within ``timeout``."""
    return fresh(row.last_heartbeat, now, timeout)


def fresh(beat: datetime | None, now: datetime, timeout: timedelta) -> bool:
    if beat is None:
        return False
    if beat.tzinfo is None:  # SQLite returns naive datetimes
        beat = beat.replace(tzinfo=timezone.utc)
    return now - beat <= timeout
