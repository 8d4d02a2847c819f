"""Who is calling, and what they may do: the seam between authentication and every route.

Authentication (gpufleet.server.auth) turns a request's key into a :class:`Principal` and
puts it on ``request.state.principal``; routes and the gateway only ask the principal
questions. Keeping the questions here, pure, means the gateway, the management API and the
node routes agree on one meaning of each role.

Roles, from most to least trusted:

- ``admin``: everything, including environment variables that change how a process loads
  code (``LD_PRELOAD`` and the like) and key management.
- ``operator``: deploy, scale, edit, delete and read deployments within its scope.
- ``inference``: the OpenAI-compatible gateway only, for deployments within its scope.
- ``node``: a node agent's own credential; only the internal routes of that node.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    INFERENCE = "inference"
    NODE = "node"


class Principal(BaseModel):
    """An authenticated caller. ``models`` empty means every deployment (no scope)."""

    name: str
    role: Role
    models: frozenset[str] = Field(default_factory=frozenset)
    #: for role ``node``: the worker this credential was issued to
    worker: str | None = None

    def in_scope(self, deployment: str) -> bool:
        return not self.models or deployment in self.models

    def may_infer(self, deployment: str) -> bool:
        """The gateway: any user role within scope (a node credential never calls models)."""
        return self.role != Role.NODE and self.in_scope(deployment)

    def may_operate(self, deployment: str) -> bool:
        """Deploy, scale, edit, delete a deployment."""
        return self.role in (Role.ADMIN, Role.OPERATOR) and self.in_scope(deployment)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


#: the principal of every request when authentication is turned off (a single-user laptop)
ANONYMOUS_ADMIN = Principal(name="anonymous (authentication off)", role=Role.ADMIN)
