"""Every read and write of the gpufleet database, as functions over a Session.

The server is the only writer. Operations that must not interleave (creating
instances for a replica count, claiming memory for a placement) run under the
server's placement lock and commit in one transaction, so two concurrent
requests cannot both see the same free memory.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpufleet.core.schemas import (
    DeploymentConfig,
    DeploymentEdit,
    DeploymentSpec,
    DeploymentView,
    EngineInstall,
    InstanceStateUpdate,
    InstanceView,
    ModelMetadata,
    Placement,
    ResourceEstimate,
    RpcServerInfo,
    StateReportsResult,
    WorkerRegistration,
    WorkerView,
)
from gpufleet.core.states import InstanceState, InvalidTransition, check_transition, summarize
from gpufleet.core import secrets
from gpufleet.core.plan import crash_looping
from gpufleet.core.rollout import outdated
from gpufleet.settings import plan_timing
from gpufleet.store import ledger
from gpufleet.store.models import DeploymentRow, InstanceRow, WorkerRow, utcnow
from gpufleet.store.workers import is_ready


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


# ---------------------------------------------------------------- deployments


def _deployment(session: Session, name: str) -> DeploymentRow:
    row = session.scalar(select(DeploymentRow).where(DeploymentRow.name == name))
    if row is None:
        raise NotFound(f"deployment {name!r} not found; `gpufleet ls` lists deployments")
    return row


def create_deployment(
    session: Session,
    spec: DeploymentSpec,
    metadata: ModelMetadata | None,
    estimate: ResourceEstimate,
) -> DeploymentRow:
    if session.scalar(select(DeploymentRow.id).where(DeploymentRow.name == spec.name)):
        raise Conflict(
            f"deployment {spec.name!r} already exists; choose another name, "
            f"or change it with `gpufleet edit` / `gpufleet scale`"
        )
    row = DeploymentRow(
        name=spec.name,
        replicas=spec.replicas,
        config=spec.config().model_dump(mode="json"),
        model_metadata=metadata.model_dump(mode="json") if metadata else None,
        estimate=estimate.model_dump(mode="json"),
    )
    session.add(row)
    session.flush()
    return row


def deployment_view(session: Session, row: DeploymentRow) -> DeploymentView:
    instances = session.scalars(
        select(InstanceRow).where(InstanceRow.deployment_id == row.id)
    ).all()
    states = [InstanceState(i.state) for i in instances if not i.deleting]
    config = _shown(DeploymentConfig.model_validate(row.config))
    return DeploymentView(
        id=row.id,
        name=row.name,
        replicas=row.replicas,
        **config.model_dump(),
        ready_replicas=sum(1 for s in states if s == InstanceState.RUNNING),
        state=summarize(row.replicas, [InstanceState(i.state) for i in instances]),
        generation=row.generation,
        rolling_out=row.rollout_max_unavailable is not None,
        rollout_status=row.rollout_status or "",
        metadata=ModelMetadata.model_validate(row.model_metadata) if row.model_metadata else None,
        estimate=ResourceEstimate.model_validate(row.estimate) if row.estimate else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def get_deployment(session: Session, name: str) -> DeploymentView:
    return deployment_view(session, _deployment(session, name))


def list_deployments(session: Session) -> list[DeploymentView]:
    rows = session.scalars(select(DeploymentRow).order_by(DeploymentRow.name)).all()
    return [deployment_view(session, r) for r in rows]


def _shown(config: DeploymentConfig) -> DeploymentConfig:
    """The configuration as anyone but the instance's node sees it: secret values masked."""
    if not config.secret_keys:
        return config
    return config.model_copy(update={"env": secrets.masked_env(config.env, config.secret_keys)})


def edited_env(config: DeploymentConfig, edit: DeploymentEdit) -> tuple[dict[str, str], list[str]]:
    """The variables and secret names after an edit: merged by default, replaced with
    ``env_replace`` (see DeploymentEdit)."""
    env, secret = ({}, set()) if edit.env_replace else (dict(config.env), set(config.secret_keys))
    for name in edit.unset_env or ():
        env.pop(name, None)
        secret.discard(name)
    for name, value in (edit.env or {}).items():
        env[name] = value
        secret.discard(name)
    for name, value in (edit.secret_env or {}).items():
        env[name] = value
        secret.add(name)
    return env, sorted(secret)


def edit_deployment(session: Session, name: str, edit: DeploymentEdit) -> DeploymentRow:
    row = _deployment(session, name)
    config = DeploymentConfig.model_validate(row.config)
    changes = edit.model_dump(exclude_none=True, exclude={"env", "secret_env", "unset_env", "env_replace"})
    if edit.env is not None or edit.secret_env is not None or edit.unset_env or edit.env_replace:
        changes["env"], changes["secret_keys"] = edited_env(config, edit)
    changes = {k: v for k, v in changes.items() if k in DeploymentConfig.model_fields}
    new_config = DeploymentConfig.model_validate({**config.model_dump(mode="json"), **changes}).model_dump(mode="json")
    if outdated(row.config, new_config):  # a policy (restart on error, grace) outdates no instance
        row.generation += 1
    row.config = new_config
    if edit.rollout:
        if row.deleting:
            raise Conflict(f"deployment {name!r} is being deleted")
        row.rollout_max_unavailable = edit.max_unavailable
        row.rollout_status = f"rollout of generation {row.generation} asked for ({edit.max_unavailable} at a time)"
    row.updated_at = utcnow()
    return row


def set_replicas(session: Session, name: str, replicas: int) -> DeploymentRow:
    row = _deployment(session, name)
    if row.deleting:
        raise Conflict(f"deployment {name!r} is being deleted")
    row.replicas = replicas
    row.updated_at = utcnow()
    return row


def mark_deployment_deleting(session: Session, name: str) -> DeploymentRow:
    row = _deployment(session, name)
    row.deleting = True
    row.replicas = 0
    row.updated_at = utcnow()
    return row


def delete_deployment_row(session: Session, name: str) -> None:
    row = _deployment(session, name)
    remaining = session.scalars(
        select(InstanceRow.id).where(InstanceRow.deployment_id == row.id)
    ).all()
    if remaining:
        raise Conflict(f"deployment {name!r} still has instances {list(remaining)}")
    session.delete(row)


# ---------------------------------------------------------------- instances


def _instance(session: Session, instance_id: int) -> InstanceRow:
    row = session.get(InstanceRow, instance_id)
    if row is None:
        raise NotFound(f"instance {instance_id} not found; `gpufleet ps` lists instances")
    return row


def instance_view(row: InstanceRow, reveal: bool = False) -> InstanceView:
    """``reveal``: secret values in clear (only for the node the instance runs on)."""
    config = DeploymentConfig.model_validate(row.config)
    return InstanceView(
        id=row.id,
        name=row.name,
        deployment=row.deployment.name,
        state=InstanceState(row.state),
        state_message=row.state_message,
        worker=row.worker_name,
        gpu_indexes=(row.placement or {}).get("gpu_indexes", []),
        port=row.port,
        pid=row.pid,
        restart_count=row.restart_count,
        next_restart_at=row.next_restart_at if row.state == InstanceState.ERROR else None,
        crash_looping=crash_looping(row.restart_count, plan_timing()),
        running_since=row.running_since,
        deleting=row.deleting,
        config=config if reveal else _shown(config),
        generation=row.generation,
        outdated=outdated(row.config or {}, row.deployment.config or {}),
        placement=Placement.model_validate(row.placement) if row.placement else None,
        rpc_servers=[RpcServerInfo.model_validate(r) for r in row.rpc_servers or ()],
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def get_instance(session: Session, instance_id: int) -> InstanceView:
    return instance_view(_instance(session, instance_id))


def list_instances(
    session: Session, deployment: str | None = None, worker: str | None = None, ids: list[int] | None = None,
    reveal: bool = False,
) -> list[InstanceView]:
    """``reveal`` (with ``worker``: a node reading its own instances): secret values in clear."""
    query = select(InstanceRow).order_by(InstanceRow.id)
    if ids:
        query = query.where(InstanceRow.id.in_(ids))
    if deployment is not None:
        query = query.where(InstanceRow.deployment_id == _deployment(session, deployment).id)
    rows = session.scalars(query).all()
    if worker is not None:  # its backends, and its RPC parts of distributed instances
        rows = [r for r in rows if r.worker_name == worker or _has_part_on(r, worker)]
    return [instance_view(r, reveal=reveal and worker is not None) for r in rows]


def instance_workers(session: Session, instance_ids: list[int]) -> dict[int, set[str]]:
    """Each instance's workers: where its backend runs and where its RPC parts run."""
    rows = session.scalars(select(InstanceRow).where(InstanceRow.id.in_(instance_ids))).all()
    return {r.id: {w for w in [r.worker_name, *(p.get("worker") for p in (r.placement or {}).get("parts", ()))] if w}
            for r in rows}


def _has_part_on(row: InstanceRow, worker: str) -> bool:
    return any(p.get("worker") == worker for p in (row.placement or {}).get("parts", ()))


def report_rpc_servers(session: Session, instance_id: int, worker: str, servers: list[RpcServerInfo]) -> InstanceRow:
    """Replace ``worker``'s RPC servers of a distributed instance (an empty list: stopped).
    Only a part worker of the instance, reporting GPUs of its part, is accepted."""
    row = _instance(session, instance_id)
    placement = Placement.model_validate(row.placement) if row.placement else None
    part = next((p for p in placement.parts if p.worker == worker), None) if placement else None
    if part is None:
        raise Conflict(f"instance {row.name} has no RPC part on worker {worker!r} "
                       f"(placed on {placement.workers() if placement else 'no worker yet'})")
    for server in servers:
        if server.worker != worker or server.gpu_index not in part.gpu_indexes:
            raise Conflict(f"RPC server for {server.worker}:{server.gpu_index} is not part of instance {row.name} "
                           f"on {worker} (its GPUs there: {part.gpu_indexes})")
    kept = [r for r in row.rpc_servers or () if r.get("worker") != worker]
    row.rpc_servers = kept + [s.model_dump(mode="json") for s in servers]
    row.updated_at = utcnow()
    return row


def mark_instance_deleting(session: Session, instance_id: int) -> InstanceRow:
    row = _instance(session, instance_id)
    row.deleting = True
    row.updated_at = utcnow()
    return row


def update_instance_state(
    session: Session, instance_id: int, update: InstanceStateUpdate
) -> InstanceRow:
    row = _instance(session, instance_id)
    if update.worker is not None and row.worker_name != update.worker and not _has_part_on(row, update.worker):
        raise Conflict(f"instance {row.name} is no longer placed on worker {update.worker} "
                       f"(now on {row.worker_name or 'no worker'}); its report from there is stale")
    check_transition(InstanceState(row.state), update.state)
    track_lifecycle(row, update.state)
    row.state = update.state
    row.state_message = update.message
    if update.port is not None:
        row.port = update.port
    if update.pid is not None:
        row.pid = update.pid
    if update.restart_count is not None:
        row.restart_count = update.restart_count
    row.updated_at = utcnow()
    return row


def track_lifecycle(row: InstanceRow, new: InstanceState) -> None:
    """The facts the plan's restart rules read: when the instance became RUNNING (its stable
    window counts from there) and a stored restart time, which belongs to one ERROR only."""
    if new == InstanceState.RUNNING and row.state != InstanceState.RUNNING:
        row.running_since = utcnow()
    elif new != InstanceState.RUNNING:
        row.running_since = None
    if new != InstanceState.ERROR:
        row.next_restart_at = None


def update_instance_states(session: Session, reports: dict[int, InstanceStateUpdate]) -> StateReportsResult:
    """Each report stands alone: one refused transition or a deleted instance leaves the
    others' reports standing (each is checked before anything is written)."""
    result = StateReportsResult()
    for iid, update in reports.items():
        row = session.get(InstanceRow, iid)
        if row is None:
            result.missing.append(iid)
            continue
        try:
            update_instance_state(session, iid, update)
        except (InvalidTransition, Conflict) as exc:  # raised by the checks, before the row changed
            result.refused[iid] = str(exc)
            continue
        result.applied.append(iid)
    return result


def delete_instance_row(session: Session, instance_id: int) -> None:
    """Deleting the row releases its claims; the version bump tells the controller
    that PENDING instances may fit now."""
    row = _instance(session, instance_id)
    placed = row.placement is not None
    session.delete(row)
    if placed:
        ledger.bump_claims_version(session)


# ---------------------------------------------------------------- workers and placement


def register_worker(session: Session, reg: WorkerRegistration) -> WorkerRow:
    row = session.get(WorkerRow, reg.name)
    data = reg.model_dump(mode="json")
    if row is None:
        row = WorkerRow(**data)
        session.add(row)
    else:
        for key, value in data.items():
            setattr(row, key, value)
    row.last_heartbeat = utcnow()
    ledger.bump_workers_version(session)
    return row


def heartbeat(session: Session, name: str, gpus_used_outside: dict[int, int] | None = None) -> WorkerRow:
    row = session.get(WorkerRow, name)
    if row is None:
        raise NotFound(f"worker {name!r} is not registered")
    row.last_heartbeat = utcnow()
    if gpus_used_outside:
        gpus = [{**g, "memory_used_outside": gpus_used_outside.get(g["index"], g.get("memory_used_outside", 0))}
                for g in row.gpus or ()]
        if gpus != row.gpus:  # what placement counts as free changed: in-memory ledgers re-read workers
            row.gpus = gpus
            ledger.bump_workers_version(session)
    return row


def remove_worker(session: Session, name: str, timeout: timedelta, force: bool = False) -> list[int]:
    """Decommission a worker: its record goes (refused while it beats, unless ``force``).
    Its instances are left to the plan, which sees a removed worker as lost past the grace:
    UNREACHABLE, then placed elsewhere (or, with GPUs chosen by hand, kept UNREACHABLE).
    Returns the instances placed on it, for the caller to say so."""
    row = session.get(WorkerRow, name)
    if row is None:
        raise NotFound(f"worker {name!r} is not registered; `gpufleet workers` lists workers")
    if is_ready(row, utcnow(), timeout) and not force:
        raise Conflict(f"worker {name!r} is alive (last heartbeat {row.last_heartbeat:%Y-%m-%d %H:%M:%S}); stop its "
                       "node first, or pass --force (a node still running registers again)")
    on_it = [r.id for r in session.scalars(select(InstanceRow)).all() if r.worker_name == name or _has_part_on(r, name)]
    session.delete(row)
    ledger.bump_claims_version(session)  # the cluster changed: the controller plans again
    return on_it


def list_workers(session: Session, timeout: timedelta) -> list[WorkerView]:
    now = utcnow()
    rows = session.scalars(select(WorkerRow).order_by(WorkerRow.name)).all()
    return [
        WorkerView(
            name=r.name,
            address=r.address,
            labels={**(r.labels or {}), **(r.operator_labels or {})},
            operator_labels=r.operator_labels or {},
            gpus=r.gpus,
            cpu_count=r.cpu_count,
            memory_total=r.memory_total,
            work_queue=r.work_queue,
            ram_reserved=r.ram_reserved or 0,
            vram_reserved=r.vram_reserved or 0,
            capabilities=r.capabilities or [],
            engines=r.engines or [],
            runtime=r.runtime or "process",
            ready=is_ready(r, now, timeout),
            last_heartbeat=r.last_heartbeat,
        )
        for r in rows
    ]


def set_worker_labels(session: Session, name: str, labels: dict[str, str]) -> WorkerRow:
    """The operator's labels of a worker (replacing the ones set before); the node's stay."""
    row = get_worker(session, name)
    row.operator_labels = dict(labels)
    ledger.bump_workers_version(session)
    return row


def set_worker_engines(session: Session, name: str, engines: list[EngineInstall]) -> WorkerRow:
    """Replace what a worker can run (after a `backends install` run on it), without
    waiting for its next registration; the heartbeat is left as it is."""
    row = get_worker(session, name)
    row.engines = [e.model_dump(mode="json") for e in engines]
    ledger.bump_workers_version(session)
    return row


def get_worker(session: Session, name: str) -> WorkerRow:
    row = session.get(WorkerRow, name)
    if row is None:
        raise NotFound(f"worker {name!r} is not registered")
    return row


def place_instance(session: Session, instance_id: int, timeout: timedelta) -> InstanceRow:
    """Place one instance against the claim ledger (see :mod:`gpufleet.store.ledger`):
    every candidate's memory comes from the deployment's stored metadata and the
    instance's configuration, with the real devices of that candidate."""
    try:
        return ledger.place_instance(session, instance_id, timeout)
    except ledger.InstanceNotFound as exc:
        raise NotFound(str(exc)) from exc


def place_instances(session: Session, instance_ids: list[int], timeout: timedelta) -> list[InstanceRow]:
    """Place several instances in one transaction (one snapshot of the ledger for all)."""
    try:
        return ledger.place_instances(session, instance_ids, timeout)
    except ledger.InstanceNotFound as exc:
        raise NotFound(str(exc)) from exc


cluster_snapshot = ledger.cluster_snapshot
plan_spec = ledger.plan_spec
claims_version = ledger.claims_version
