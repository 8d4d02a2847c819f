"""API keys in the database: created with a random token, stored as its SHA-256, found by prefix.

Why SHA-256 and not bcrypt/argon2: the token is 256 random bits, so no one can guess it
from its hash whatever the hash's speed; a slow password hash would only add its cost
(tens of milliseconds) to every request the key is checked on. The token is shown once, on
creation, and never stored. ``last_used_at`` is written at most once per ``TOUCH_EVERY`` per key
(the caller decides when, see gpufleet.server.auth) so that checking a key is not a write.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from gpufleet.core.access import Principal, Role
from gpufleet.core.keys import JOIN_ROLE, TOKEN_PREFIX, KeyCreated, KeyView
from gpufleet.store.models import ApiKeyRow, utcnow

TOUCH_EVERY = timedelta(minutes=1)
_ALPHABET = string.ascii_lowercase + string.digits


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """(prefix, token): ``gf_<8 characters>_<43 characters of 256 random bits>``."""
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return prefix, f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


def prefix_of(token: str) -> str | None:
    """The prefix a token names, or None for anything that is not shaped like one of ours."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    prefix, sep, secret = token[len(TOKEN_PREFIX):].partition("_")
    if not sep or len(prefix) != 8 or len(secret) < 32:
        return None
    return prefix


def _aware(when: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return when.replace(tzinfo=timezone.utc) if when is not None and when.tzinfo is None else when


def create_key(session: Session, name: str, role: str, models: Iterable[str] = (),
               expires_in: timedelta | None = None, worker: str | None = None,
               peer_token: str | None = None) -> KeyCreated:
    prefix, token = new_token()
    now = utcnow()
    row = ApiKeyRow(prefix=prefix, secret_hash=hash_token(token), name=name, role=str(role),
                    models=sorted(set(models)), worker=worker, peer_token=peer_token, created_at=now,
                    expires_at=now + expires_in if expires_in else None)
    session.add(row)
    session.flush()
    return KeyCreated(**view(row).model_dump(), token=token)


def view(row: ApiKeyRow, now: datetime | None = None) -> KeyView:
    expires = _aware(row.expires_at)
    return KeyView(id=row.id, prefix=row.prefix, name=row.name, role=row.role, models=list(row.models or []),
                   worker=row.worker, created_at=_aware(row.created_at), expires_at=expires,  # type: ignore[arg-type]
                   last_used_at=_aware(row.last_used_at),
                   expired=expires is not None and expires <= (now or utcnow()))


def list_keys(session: Session) -> list[KeyView]:
    now = utcnow()
    return [view(r, now) for r in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]


def find(session: Session, ref: str) -> ApiKeyRow | None:
    """A key by its id, its prefix or its name (the name only when one key has it)."""
    if ref.isdigit():
        row = session.get(ApiKeyRow, int(ref))
        if row is not None:
            return row
    row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.prefix == ref)).first()
    if row is not None:
        return row
    named = session.scalars(select(ApiKeyRow).where(ApiKeyRow.name == ref)).all()
    if len(named) > 1:
        raise LookupError(f"{len(named)} keys are named {ref!r}; remove one by its id or prefix (gpufleet keys ls)")
    return named[0] if named else None


def delete_key(session: Session, row: ApiKeyRow) -> None:
    session.delete(row)


def delete_where(session: Session, *, role: str, name: str | None = None, worker: str | None = None) -> int:
    query = delete(ApiKeyRow).where(ApiKeyRow.role == role)
    if name is not None:
        query = query.where(ApiKeyRow.name == name)
    if worker is not None:
        query = query.where(ApiKeyRow.worker == worker)
    return session.execute(query).rowcount or 0


def any_of_role(session: Session, role: str, *, name_prefix: str = "") -> bool:
    query = select(ApiKeyRow.id).where(ApiKeyRow.role == role)
    if name_prefix:
        query = query.where(ApiKeyRow.name.startswith(name_prefix))
    return session.scalars(query.limit(1)).first() is not None


@dataclass(frozen=True)
class Verified:
    """A token that matched a live key: who it is, and until when it is valid."""

    key_id: int
    principal: Principal | None  # None: a join token (it only registers nodes)
    expires_at: datetime | None


def verify(session: Session, token: str, now: datetime | None = None) -> Verified | None:
    """The key a token belongs to, if it exists and has not expired; None otherwise."""
    prefix = prefix_of(token)
    if prefix is None:
        return None
    row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix)).first()
    if row is None or not hmac.compare_digest(row.secret_hash, hash_token(token)):
        return None
    expires = _aware(row.expires_at)
    if expires is not None and expires <= (now or utcnow()):
        return None
    if row.role == JOIN_ROLE:
        return Verified(row.id, None, expires)
    principal = Principal(name=row.name, role=Role(row.role), models=frozenset(row.models or ()), worker=row.worker)
    return Verified(row.id, principal, expires)


def touch(session: Session, key_ids: Iterable[int], when: datetime) -> None:
    """Record that these keys were used (one statement for all of them)."""
    ids = list(key_ids)
    if ids:
        session.execute(update(ApiKeyRow).where(ApiKeyRow.id.in_(ids)).values(last_used_at=when))


def peer_token(session: Session, worker: str) -> str | None:
    """The credential the server presents to this worker's node API (the newest node key's)."""
    row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.role == Role.NODE.value, ApiKeyRow.worker == worker)
                          .order_by(ApiKeyRow.id.desc())).first()
    return row.peer_token if row is not None else None
