"""API keys as the API and CLI see them: what a caller asks for and what it gets back.

Pure (no SQL, no HTTP): the store (gpufleet.store.keys), the server routes and the CLI share
these shapes and the one parser of durations (``30d``), so ``keys create --expires 30d`` means
the same on every side.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpufleet.core.access import Role

#: every token starts with this, so a leaked one is recognisable (secret scanners, logs)
TOKEN_PREFIX = "gf_"
#: roles a person may create keys for (node credentials and join tokens are issued by the server)
USER_ROLES = (Role.ADMIN, Role.OPERATOR, Role.INFERENCE)
#: a join token: registers a node once, never calls anything else
JOIN_ROLE = "join"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,62}$")
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` → a positive timedelta; anything else is an error
    saying what is accepted."""
    match = _DURATION.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"expiry {text!r} is not a duration; use a positive number with s, m, h, d or w, e.g. 30d")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


class KeyCreate(BaseModel):
    """``POST /v1/keys``: a user key (admin, operator or inference)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="who or what uses it (letters, digits, ._@:-, at most 63)")
    role: Role = Role.INFERENCE
    models: list[str] = Field(default_factory=list, description="deployments it may use; empty: all")
    expires_in: str | None = Field(default=None, description="e.g. 30d, 12h; none: never expires")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"key name {v!r}: use 1 to 63 letters, digits or ._@:- characters")
        return v

    @field_validator("role")
    @classmethod
    def _user_role(cls, v: Role) -> Role:
        if v not in USER_ROLES:
            raise ValueError(f"role {v.value!r} cannot be created by hand; use admin, operator or inference "
                             "(nodes get their credential with a join token)")
        return v

    @field_validator("expires_in")
    @classmethod
    def _valid_expiry(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v


class KeyView(BaseModel):
    """A key as ``keys ls`` shows it: never its secret."""

    id: int
    prefix: str
    name: str
    role: str
    models: list[str]
    worker: str | None = None
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    expired: bool = False


class KeyCreated(KeyView):
    """The answer to a create: the only time the token is shown."""

    token: str


class JoinRequest(BaseModel):
    """``POST /v1/nodes/join`` with a join token: the node's name."""

    model_config = ConfigDict(extra="forbid")

    name: str


class NodeCredentials(BaseModel):
    """What a node receives when it joins, and keeps (0600) in its home: its own key for the
    server, and the server's credential it must require on its own API (logs)."""

    worker: str
    node_key: str
    server_key: str
