"""The checks the deployment and instance routes make beyond the path rules of
gpufleet.server.authz: an operator's scope over what it names or lists, a node's own
instances, loader variables (admin only), and secrets in what goes to Prefect.

Kept out of app.py so that the routes stay one line longer each, not ten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from fastapi import HTTPException
from sqlalchemy.orm import Session

from gpufleet.core import secrets
from gpufleet.core.access import Principal, Role
from gpufleet.core.schemas import DeploymentConfig, DeploymentSpec, DeploymentView, InstanceView
from gpufleet.server import authz
from gpufleet.store import repository as repo
from gpufleet.store.models import DeploymentRow

T = TypeVar("T", DeploymentView, InstanceView)


def check_env(p: Principal, deployment: str, env: Mapping[str, str], secret_keys: Sequence[str] = ()) -> None:
    """May ``p`` set these variables on this deployment? Operators: within scope, and never a
    loader variable (LD_PRELOAD …: that is running code on the workers). A secret given as the
    mask itself (copied from an answer) is refused: it would replace the value with ``***``."""
    authz.require_operate(p, deployment)
    if masked := secrets.still_masked(env, secret_keys):
        raise HTTPException(400, f"secret variables {masked} are given as {secrets.MASK}, the mask shown for "
                                 "secret values; give their real values")
    if p.is_admin:
        return
    loaders = secrets.loader_vars(env)
    if loaders:
        raise HTTPException(403, f"only an admin may set {', '.join(loaders)}: these variables change which code "
                                 f"the backend loads; key {p.name} is {p.role.value}")


def scoped(p: Principal, views: Sequence[T]) -> list[T]:
    """What of a list this principal may see: everything for admins, its scope for operators."""
    if p.is_admin or not p.models:
        return list(views)
    return [v for v in views if p.in_scope(v.name if isinstance(v, DeploymentView) else v.deployment)]


def node_reads(p: Principal, worker: str | None) -> str | None:
    """For a node: the worker whose instances it may read (its own; 403 for another's)."""
    if p.role != Role.NODE:
        return None
    if worker is not None and worker != p.worker:
        raise HTTPException(403, f"node {p.worker} may only read its own instances, not worker {worker!r}'s")
    return p.worker


def check_instance(p: Principal, inst: InstanceView, session: Session, operate: bool = False) -> InstanceView:
    """``p`` may see (or, ``operate``, act on) this instance; a node gets it with secrets in clear."""
    if p.role == Role.NODE:
        workers = repo.instance_workers(session, [inst.id]).get(inst.id, set())
        if operate or p.worker not in workers:
            raise HTTPException(403, f"node {p.worker} may only read instances placed on it")
        return repo.instance_view(repo._instance(session, inst.id), reveal=True)  # noqa: SLF001
    if not p.is_admin and not p.in_scope(inst.deployment):
        raise HTTPException(403, f"key {p.name} is not scoped to deployment {inst.deployment!r}")
    return inst


def check_reporter(p: Principal, instance_ids: list[int], session: Session) -> None:
    """A node reports states only for instances placed on it (admins: the controller, any)."""
    if p.is_admin:
        return
    workers = repo.instance_workers(session, instance_ids)
    foreign = sorted(i for i in instance_ids if i in workers and p.worker not in workers[i])
    if p.role != Role.NODE or foreign:
        raise HTTPException(403, f"node {p.worker} may only report instances placed on it; "
                                 f"not {foreign or instance_ids}")


def flow_spec(spec: DeploymentSpec) -> dict[str, Any]:
    """The spec as a Prefect flow run parameter: secret values masked (run parameters are
    stored and shown by Prefect; the flow reads the real ones from the server)."""
    data = spec.model_dump(mode="json")
    data["env"] = secrets.masked_env(spec.env, spec.secret_keys)
    return data


def record_spec(session: Session, spec: DeploymentSpec) -> tuple[DeploymentSpec, DeploymentView | None]:
    """The deploy flow registers the spec it was started with, its secrets masked: masked
    values stand for the stored ones. Returns the spec in clear and the existing deployment's
    view (None: none yet); 409 when one exists with another configuration, 400 for a masked
    secret with no stored value behind it."""
    row = session.query(DeploymentRow).filter(DeploymentRow.name == spec.name).one_or_none()
    if row is not None:
        stored = DeploymentConfig.model_validate(row.config)
        spec = spec.model_copy(update={"env": secrets.unmask_env(spec.env, spec.secret_keys, stored.env)})
        if stored != spec.config():
            raise HTTPException(409, f"deployment {spec.name!r} exists with a different configuration; "
                                     "use edit or scale, or delete it first")
        return spec, repo.deployment_view(session, row)
    if masked := secrets.still_masked(spec.env, spec.secret_keys):
        raise HTTPException(400, f"secret variables {masked} are masked ({secrets.MASK}); give their values")
    return spec, None
