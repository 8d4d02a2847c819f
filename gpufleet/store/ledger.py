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

import json
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gpufleet.core.placement import (
    ClaimSnapshot,
    ClusterSnapshot,
    GpuSnapshot,
    Ledger,
    PlacementRequest,
    PlanResult,
    Placer,
    Unplaceable,
    WorkerSnapshot,
    plan_deployment,
)
from gpufleet.core.placement.request import source_key
from gpufleet.core.placement_spec import Placement, PlacementPart
from gpufleet.core.schemas import RPC_CAPABILITY, DeploymentConfig, DeploymentSpec, ModelMetadata, ModelSource
from gpufleet.core.states import InstanceState, check_transition
from gpufleet.store.models import DeploymentRow, InstanceRow, PlacementLedgerRow, WorkerRow, utcnow
from gpufleet.store.workers import fresh

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
    """Built with ``model_construct``: the placements were validated when recorded, and
    this runs for every placement (validating 1,000 claims each time costs more than placing)."""
    rows = session.execute(
        select(InstanceRow.id, InstanceRow.placement, DeploymentRow.name, DeploymentRow.config)
        .join(DeploymentRow, InstanceRow.deployment_id == DeploymentRow.id)
        .where(InstanceRow.placement.is_not(None))
    ).all()
    sources: dict[str, str] = {}
    claims = []
    for iid, p, deployment, config in rows:
        if deployment not in sources:
            sources[deployment] = _source_key(config)
        parts = [PlacementPart.model_construct(worker=x["worker"], gpu_indexes=x.get("gpu_indexes", []),
                                               vram_claim=_int_keys(x.get("vram_claim", {})),
                                               ram_claim=x.get("ram_claim", 0))
                 for x in p.get("parts", ())]
        claims.append(ClaimSnapshot.model_construct(
            deployment=deployment, instance=iid, source=sources[deployment], worker=p["worker"],
            gpu_indexes=p.get("gpu_indexes", []), vram_claim=_int_keys(p.get("vram_claim", {})),
            ram_claim=p.get("ram_claim", 0), exclusive=p.get("exclusive", False), parts=parts,
        ))
    return claims


def _int_keys(claims: dict[str, int]) -> dict[int, int]:
    return {int(k): v for k, v in claims.items()}  # JSON object keys are strings


_WORKER_COLUMNS = (WorkerRow.name, WorkerRow.last_heartbeat, WorkerRow.labels, WorkerRow.memory_total,
                   WorkerRow.ram_reserved, WorkerRow.vram_reserved, WorkerRow.cpu_count, WorkerRow.gpus,
                   WorkerRow.capabilities)


def _worker_snapshot(row: tuple, now: datetime, timeout: timedelta) -> WorkerSnapshot:
    name, beat, labels, memory, ram_reserved, vram_reserved, cpus, gpus, capabilities = row
    return WorkerSnapshot.model_construct(
        name=name, ready=fresh(beat, now, timeout), labels=labels or {}, memory_total=memory,
        ram_reserved=ram_reserved or 0, cpu_count=cpus, rpc=RPC_CAPABILITY in (capabilities or ()),
        gpus=[GpuSnapshot.model_construct(index=g["index"], name=g.get("name", ""), memory_total=g["memory_total"],
                                          reserved=vram_reserved or 0, vendor=g.get("vendor", "nvidia"),
                                          unified_memory=g.get("vendor") == "apple")
              for g in gpus or ()],
    )


def cluster_snapshot(session: Session, timeout: timedelta) -> ClusterSnapshot:
    """Workers (readiness from heartbeats) and the claims of every placed instance."""
    now = utcnow()
    rows = session.execute(select(*_WORKER_COLUMNS).order_by(WorkerRow.name)).all()
    return ClusterSnapshot.model_construct(workers=[_worker_snapshot(tuple(r), now, timeout) for r in rows],
                                           claims=_claims(session))


def place_instance(session: Session, instance_id: int, timeout: timedelta) -> InstanceRow:
    """Place one instance from its deployment's stored metadata and its own copy
    of the configuration, and record the claim (SCHEDULED) — or leave it PENDING
    with the reason for every worker. Idempotent: a placed instance is returned as is."""
    return place_instances(session, [instance_id], timeout)[0]


def place_instances(session: Session, instance_ids: list[int], timeout: timedelta) -> list[InstanceRow]:
    """Place several instances in one transaction, in order, against one snapshot of
    the ledger that each placement updates (one read of the cluster for all of them:
    placing a deployment's 1,000 replicas costs one snapshot, not 1,000)."""
    lock_ledger(session)
    rows = []
    for iid in instance_ids:
        row = session.get(InstanceRow, iid)
        if row is None:
            raise InstanceNotFound(f"instance {iid} not found; `gpufleet ps` lists instances")
        rows.append(row)
    if all(r.placement is not None for r in rows):
        return rows
    ledger = Ledger(cluster_snapshot(session, timeout))
    placers: dict[tuple[int, str], Placer] = {}
    for row in rows:
        if row.placement is not None:
            continue  # already placed (idempotent retry)
        key = (row.deployment_id, json.dumps(row.config, sort_keys=True))
        if key not in placers:
            placers[key] = Placer(ledger, _request(session, row))
        _record(row, placers[key].place())
    if any(r.placement is not None for r in rows):
        bump_claims_version(session)
    return rows


def _request(session: Session, row: InstanceRow) -> PlacementRequest:
    dep = session.get(DeploymentRow, row.deployment_id)
    assert dep is not None
    metadata = ModelMetadata.model_validate(dep.model_metadata) if dep.model_metadata else None
    return PlacementRequest.from_config(dep.name, DeploymentConfig.model_validate(row.config), metadata)


def _record(row: InstanceRow, result: Placement | Unplaceable) -> None:
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
    row.updated_at = utcnow()


def plan_spec(session: Session, spec: DeploymentSpec, metadata: ModelMetadata | None,
              timeout: timedelta, cluster: ClusterSnapshot | None = None) -> PlanResult:
    """Dry run of every replica of ``spec`` against the live ledger (or ``cluster``); writes nothing."""
    snapshot = cluster if cluster is not None else cluster_snapshot(session, timeout)
    return plan_deployment(snapshot, PlacementRequest.from_config(spec.name, spec.config(), metadata), spec.replicas)
