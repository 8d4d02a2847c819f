"""Who may call which route: the rules by path, and the finer checks routes make.

One table, read top to bottom, so that a new route falls into "management" (admin or
operator) unless it is listed: a forgotten route is closed, not open.

- open: ``GET /v1/health``, the web page shell (``/``, ``/web/*``), the API docs
  (``/docs``, ``/docs/assets/*``, ``/openapi.json``) and a node agent's ``/v1/poke``. The page
  and docs hold no data; the page asks for a key before it calls the API.
- join: ``POST /v1/nodes/join`` takes a join token, and only a join token.
- ``GET /v1/whoami``: any user key, about itself (a gateway process checks callers' keys with it).
- gateway (OpenAI-compatible paths): any user key (admin, operator, inference); the gateway
  checks the model's scope itself (``Principal.may_infer``); errors in the OpenAI shape.
- keys (``/v1/keys``), worker management (labels, removal, engine installs) and the
  controller's internal routes: admin only.
- node routes (state reports, RPC-server reports, heartbeats, registration, engine lists):
  a node credential (for its own worker only) or an admin (the server's controller).
- reading instances: admin, operator, or a node (which sees only its own worker's).
- everything else: admin or operator; an operator only within its scoped deployments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import HTTPException

from gpufleet.core.access import Principal, Role

OPEN, JOIN, GATEWAY, ADMIN, NODE, NODE_READ, MANAGE = "open", "join", "gateway", "admin", "node", "node-read", "manage"

GATEWAY_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/models"})


@dataclass(frozen=True)
class Rule:
    kind: str
    #: errors in the OpenAI shape ({"error": {...}}) rather than {"detail": ...}
    openai: bool = False
    #: for NODE rules: the path's group that names the worker (checked against the node's own)
    worker_group: str | None = None
    #: for MANAGE rules: the path's group that names a deployment (checked against the scope)
    deployment_group: str | None = None


_RULES: list[tuple[frozenset[str], re.Pattern[str], Rule]] = [
    (frozenset({"GET", "HEAD"}), re.compile(r"^/(v1/health|web/.*|docs(/.*)?|redoc|openapi\.json)?$"), Rule(OPEN)),
    (frozenset({"POST"}), re.compile(r"^/v1/nodes/join$"), Rule(JOIN)),
    (frozenset({"GET"}), re.compile(r"^/v1/whoami$"), Rule(GATEWAY)),  # any user key, about itself
    (frozenset({"POST"}), re.compile(r"^/v1/workers$"), Rule(NODE)),  # registration: worker checked on the body
    (frozenset({"POST"}), re.compile(r"^/v1/workers/(?P<w>[^/]+)/heartbeat$"), Rule(NODE, worker_group="w")),
    (frozenset({"PUT"}), re.compile(r"^/v1/internal/workers/(?P<w>[^/]+)/engines$"), Rule(NODE, worker_group="w")),
    (frozenset({"PUT"}), re.compile(r"^/v1/internal/instances/\d+/rpc-servers/(?P<w>[^/]+)$"),
     Rule(NODE, worker_group="w")),
    (frozenset({"PUT"}), re.compile(r"^/v1/internal/instances/(states|\d+/state)$"), Rule(NODE)),  # ids checked in the route
    (frozenset({"GET"}), re.compile(r"^/v1/instances(/\d+)?$"), Rule(NODE_READ)),
    (frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"}), re.compile(r"^/v1/internal/.*$"), Rule(ADMIN)),
    (frozenset({"GET", "POST", "DELETE"}), re.compile(r"^/v1/(keys|join-tokens)(/.*)?$"), Rule(ADMIN)),
    (frozenset({"PATCH", "DELETE"}), re.compile(r"^/v1/workers/[^/]+$"), Rule(ADMIN)),
    (frozenset({"POST"}), re.compile(r"^/v1/workers/[^/]+/backends$"), Rule(ADMIN)),
    (frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"}), re.compile(r"^/v1/deployments/(?P<d>[^/]+)(/.*)?$"),
     Rule(MANAGE, deployment_group="d")),
]


def rule_for(method: str, path: str) -> Rule:
    if path in GATEWAY_PATHS or path.startswith("/v1/models/") and method == "GET":
        return Rule(GATEWAY, openai=True)
    for methods, pattern, rule in _RULES:
        if method in methods and (match := pattern.match(path)):
            if rule.worker_group or rule.deployment_group:
                return _bound(rule, match)
            return rule
    return Rule(MANAGE)


def _bound(rule: Rule, match: re.Match[str]) -> Rule:
    """The rule with the path's worker or deployment name in place of its group name."""
    return Rule(rule.kind, rule.openai,
                worker_group=match.group(rule.worker_group) if rule.worker_group else None,
                deployment_group=match.group(rule.deployment_group) if rule.deployment_group else None)


def refuse(rule: Rule, p: Principal, path: str) -> str | None:
    """Why this principal may not call this route (None: it may, as far as the path tells)."""
    if rule.kind == GATEWAY:
        return None if p.role != Role.NODE else "a node credential cannot call models"
    if p.is_admin:
        return None
    if rule.kind == ADMIN:
        return f"{path} needs an admin key; this key ({p.name}) is {p.role.value}"
    if rule.kind == NODE:
        if p.role != Role.NODE:
            return f"{path} is for nodes; this key ({p.name}) is {p.role.value}"
        if rule.worker_group is not None and rule.worker_group != p.worker:
            return f"node {p.worker} may only report for itself, not for worker {rule.worker_group}"
        return None
    if rule.kind == NODE_READ and p.role == Role.NODE:
        return None  # the route shows it only its own worker's instances
    if p.role != Role.OPERATOR:
        return (f"{path} needs an admin or operator key; this key ({p.name}) is {p.role.value}"
                + (" (inference keys call the OpenAI-compatible routes only)" if p.role == Role.INFERENCE else ""))
    if rule.deployment_group is not None and not p.in_scope(rule.deployment_group):
        return f"key {p.name} is not scoped to deployment {rule.deployment_group!r}"
    return None


# ---------------------------------------------------------------- checks routes make


def require_operate(p: Principal, deployment: str) -> None:
    if not p.may_operate(deployment):
        raise HTTPException(403, f"key {p.name} ({p.role.value}) may not operate deployment {deployment!r}")


def require_worker(p: Principal, worker: str | None) -> None:
    """A node acts for its own worker only (admins, i.e. the controller, for any)."""
    if p.is_admin:
        return
    if p.role != Role.NODE or worker is None or p.worker != worker:
        raise HTTPException(403, f"node {p.worker} may only report for its own worker, not {worker!r}")


def require_admin(p: Principal, what: str) -> None:
    if not p.is_admin:
        raise HTTPException(403, f"{what} needs an admin key; this key ({p.name}) is {p.role.value}")
