"""The claim ledger in the database: the cluster snapshot placement reads, and
the atomic read–decide–claim of one instance.

free = total − reserved − Σ claims of placed instances. Claims live in each
instance's ``placement`` JSON; they are released when the instance row goes.
Atomicity across server processes: every placement transaction starts by
writing the single ``placement_ledger`` row (:func:`lock_ledger`), so two
placements never read the same free memory — PostgreSQL holds the row lock
until commit, SQLite takes its one write lock at that statement. The server's
in-process lock stays on top (cheaper queueing than database lock waits).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gpufleet.core.placement import (
    ClaimSnapshot,
    ClusterSnapshot,
    GpuSnapshot,
    PlacementRequest,
    PlanResult,
    Placer,
    Unplaceable,
    WorkerSnapshot,
    plan_deployment,
)
from gpufleet.core.placement.request import source_key
from gpufleet.core.schemas import DeploymentConfig, DeploymentSpec, ModelMetadata, ModelSource, Placement
from gpufleet.core.states import InstanceState, check_transition
from gpufleet.store.models import DeploymentRow, InstanceRow, PlacementLedgerRow, WorkerRow, utcnow
from gpufleet.store.workers import is_ready

LEDGER_ID = 1
#: Start of the state message of an instance that was tried and did not fit.
UNPLACED_PREFIX = "cannot be placed: "


class InstanceNotFound(LookupError):
    pass


def lock_ledger(session: Session) -> None:
    """Must be the first statement of the transaction (SQLite: a read before it
    would pin an older snapshot). Creates the row if a database predates it."""
    result = session.execute(
        update(PlacementLedgerRow).where(PlacementLedgerRow.id == LEDGER_ID).values(locked_at=utcnow())
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        session.add(PlacementLedgerRow(id=LEDGER_ID, claims_version=0, locked_at=utcnow()))
        session.flush()


def bump_claims_version(session: Session) -> None:
    session.execute(
        update(PlacementLedgerRow)
        .where(PlacementLedgerRow.id == LEDGER_ID)
        .values(claims_version=PlacementLedgerRow.claims_version + 1)
    )


def claims_version(session: Session) -> int:
    return session.scalar(select(PlacementLedgerRow.claims_version).where(PlacementLedgerRow.id == LEDGER_ID)) or 0


def _source_key(config: dict) -> str:
    src = config.get("source")
    return source_key(ModelSource.model_validate(src)) if src else ""


def _claims(session: Session) -> list[ClaimSnapshot]:
    rows = session.execute(
        select(InstanceRow.id, InstanceRow.placement, DeploymentRow.name, DeploymentRow.config)
        .join(DeploymentRow, InstanceRow.deployment_id == DeploymentRow.id)
        .where(InstanceRow.placement.is_not(None))
    ).all()
    claims = []
    for iid, placement, deployment, config in rows:
        p = Placement.model_validate(placement)
        claims.append(ClaimSnapshot(
            deployment=deployment, instance=iid, source=_source_key(config), worker=p.worker,
            gpu_indexes=p.gpu_indexes, vram_claim=p.vram_claim, ram_claim=p.ram_claim,
            exclusive=p.exclusive, parts=p.parts,
        ))
    return claims


def _worker_snapshot(w: WorkerRow, ready: bool) -> WorkerSnapshot:
    return WorkerSnapshot(
        name=w.name, ready=ready, labels=w.labels, memory_total=w.memory_total,
        ram_reserved=w.ram_reserved or 0, cpu_count=w.cpu_count,
        gpus=[GpuSnapshot(index=g["index"], name=g.get("name", ""), memory_total=g["memory_total"],
                          reserved=w.vram_reserved or 0, vendor=g.get("vendor", "nvidia"),
                          unified_memory=g.get("vendor") == "apple")
              for g in w.gpus],
    )


def cluster_snapshot(session: Session, timeout: timedelta) -> ClusterSnapshot:
    """Workers (readiness from heartbeats) and the claims of every placed instance."""
    now = utcnow()
    workers = [_worker_snapshot(w, is_ready(w, now, timeout))
               for w in session.scalars(select(WorkerRow).order_by(WorkerRow.name))]
    return ClusterSnapshot(workers=workers, claims=_claims(session))


def place_instance(session: Session, instance_id: int, timeout: timedelta) -> InstanceRow:
    """Place one instance from its deployment's stored metadata and its own copy
    of the configuration, and record the claim (SCHEDULED) — or leave it PENDING
    with the reason for every worker. Idempotent: a placed instance is returned as is."""
    lock_ledger(session)
    row = session.get(InstanceRow, instance_id)
    if row is None:
        raise InstanceNotFound(f"instance {instance_id} not found; `gpufleet ps` lists instances")
    if row.placement is not None:
        return row
    dep = session.get(DeploymentRow, row.deployment_id)
    assert dep is not None
    metadata = ModelMetadata.model_validate(dep.model_metadata) if dep.model_metadata else None
    request = PlacementRequest.from_config(dep.name, DeploymentConfig.model_validate(row.config), metadata)
    result = Placer(cluster_snapshot(session, timeout), request).place()
    current = InstanceState(row.state)
    if isinstance(result, Unplaceable):
        if current != InstanceState.PENDING:
            check_transition(current, InstanceState.PENDING)
        row.state = InstanceState.PENDING
        row.state_message = UNPLACED_PREFIX + result.message()
    else:
        check_transition(current, InstanceState.SCHEDULED)
        row.placement = result.model_dump(mode="json")
        row.worker_name = result.worker
        row.state = InstanceState.SCHEDULED
        row.state_message = f"placed on {result.describe()}"
        bump_claims_version(session)
    row.updated_at = utcnow()
    return row


def plan_spec(session: Session, spec: DeploymentSpec, metadata: ModelMetadata | None,
              timeout: timedelta, cluster: ClusterSnapshot | None = None) -> PlanResult:
    """Dry run of every replica of ``spec`` against the live ledger (or ``cluster``); writes nothing."""
    snapshot = cluster if cluster is not None else cluster_snapshot(session, timeout)
    return plan_deployment(snapshot, PlacementRequest.from_config(spec.name, spec.config(), metadata), spec.replicas)
