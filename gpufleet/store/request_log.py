"""Request ids: a retried operation is applied once and answered as the first time.

Why: a client whose request timed out cannot know whether the server applied it, so it must
be able to send it again. The client sends the same `Idempotency-Key` on every try; the first
try claims the id here (a row with no answer yet), the answer is stored when it is known, and
any later try with that id gets the stored answer instead of applying the operation again.
A try that arrives while the first is still being applied is told so (the caller answers 409
and the client retries). Answers of 5xx are not kept: the operation was not (fully) applied,
so a retry applies it. Ids are kept for a day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gpufleet.store.models import RequestLogRow, utcnow

KEEP = timedelta(days=1)
#: a claim whose answer never came (the server died while applying it) is given up after this
ABANDONED = timedelta(minutes=10)


@dataclass(frozen=True)
class Answered:
    status: int
    body: str


@dataclass(frozen=True)
class InProgress:
    pass


@dataclass(frozen=True)
class OtherRequest:
    """The id was used for another method or path: a client bug, refused."""

    method: str
    path: str


@dataclass(frozen=True)
class Claimed:
    pass


def claim(session: Session, request_id: str, method: str, path: str) -> Claimed | Answered | InProgress | OtherRequest:
    """Claim `request_id` for this request, or say what became of the earlier one with it."""
    now = utcnow()
    session.execute(delete(RequestLogRow).where(RequestLogRow.created_at < now - KEEP))
    row = session.get(RequestLogRow, request_id)
    if row is None:
        try:
            with session.begin_nested():
                session.add(RequestLogRow(request_id=request_id, method=method, path=path, created_at=now))
        except IntegrityError:  # a concurrent try claimed it first
            return InProgress()
        return Claimed()
    if (row.method, row.path) != (method, path):
        return OtherRequest(row.method, row.path)
    if row.status is not None:
        return Answered(row.status, row.body or "")
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=now.tzinfo)
    if now - created > ABANDONED:
        row.created_at = now  # its server died mid-way: this try applies it
        return Claimed()
    return InProgress()


def answer(session: Session, request_id: str, status: int, body: str) -> None:
    """Keep the answer of a claimed id; a 5xx answer releases the id so that a retry applies it."""
    row = session.get(RequestLogRow, request_id)
    if row is None:
        return
    if status >= 500:
        session.delete(row)
    else:
        row.status, row.body = status, body


def release(session: Session, request_id: str) -> None:
    row = session.get(RequestLogRow, request_id)
    if row is not None and row.status is None:
        session.delete(row)

