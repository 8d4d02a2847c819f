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
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from gpufleet.core.placement import (
    ClaimSnapshot,
    ClusterSnapshot,
    GpuSnapshot,
    PlacementRequest,
    PlanResult,
    Unplaceable,
    WorkerSnapshot,
    plan_deployment,
)
from gpufleet.core.placement.live import LiveLedger
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


_LEDGER = PlacementLedgerRow.__table__


@dataclass(frozen=True)
class LedgerLock:
    """What the database's ledger row held when this transaction locked it."""

    claims_token: str
    workers_version: int


def lock_ledger(session: Session) -> LedgerLock:
    """Must be the first statement of the transaction (SQLite: a read before it
    would pin an older snapshot). Creates the row if a database predates it.

    One statement locks and reads (``UPDATE … RETURNING``, SQLite ≥ 3.35 and PostgreSQL), and it
    is a Core statement: the ORM's bulk-update path evaluates its criteria against the session's
    objects, which cost more than the placement itself on the one-replica-per-request path."""
    row = session.execute(
        _LEDGER.update().where(_LEDGER.c.id == LEDGER_ID).values(locked_at=utcnow())
        .returning(_LEDGER.c.claims_token, _LEDGER.c.workers_version)
    ).first()
    if row is None:
        session.add(PlacementLedgerRow(id=LEDGER_ID, claims_version=0, locked_at=utcnow()))
        session.flush()
        return LedgerLock("", 0)
    return LedgerLock(row[0] or "", row[1] or 0)


def bump_claims_version(session: Session) -> str:
    """The claims changed: a new version and a new token (which makes every in-memory copy of
    the ledger stale but the one that writes it). Returns the token."""
    token = secrets.token_hex(16)
    session.execute(
        _LEDGER.update().where(_LEDGER.c.id == LEDGER_ID)
        .values(claims_version=_LEDGER.c.claims_version + 1, claims_token=token)
    )
    return token


def bump_workers_version(session: Session) -> None:
    """A worker registered (or changed what it has): in-memory ledgers re-read the workers."""
    session.execute(
        update(PlacementLedgerRow)
        .where(PlacementLedgerRow.id == LEDGER_ID)
        .values(workers_version=PlacementLedgerRow.workers_version + 1)
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


_WORKER_COLUMNS = (WorkerRow.name, WorkerRow.last_heartbeat, WorkerRow.labels, WorkerRow.operator_labels,
                   WorkerRow.memory_total,
                   WorkerRow.ram_reserved, WorkerRow.vram_reserved, WorkerRow.cpu_count, WorkerRow.gpus,
                   WorkerRow.capabilities)


def _worker_snapshot(row: tuple, now: datetime, timeout: timedelta) -> WorkerSnapshot:
    name, beat, labels, operator_labels, memory, ram_reserved, vram_reserved, cpus, gpus, capabilities = row
    return WorkerSnapshot.model_construct(
        name=name, ready=fresh(beat, now, timeout), labels={**(labels or {}), **(operator_labels or {})},
        memory_total=memory,
        ram_reserved=ram_reserved or 0, cpu_count=cpus, rpc=RPC_CAPABILITY in (capabilities or ()),
        gpus=[GpuSnapshot.model_construct(index=g["index"], name=g.get("name", ""), memory_total=g["memory_total"],
                                          reserved=vram_reserved or 0, used_outside=g.get("memory_used_outside", 0),
                                          vendor=g.get("vendor", "nvidia"),
                                          unified_memory=g.get("vendor") == "apple")
              for g in gpus or ()],
    )


def _worker_snapshots(session: Session, now: datetime, timeout: timedelta) -> list[WorkerSnapshot]:
    rows = session.execute(select(*_WORKER_COLUMNS).order_by(WorkerRow.name)).all()
    return [_worker_snapshot(tuple(r), now, timeout) for r in rows]


def cluster_snapshot(session: Session, timeout: timedelta) -> ClusterSnapshot:
    """Workers (readiness from heartbeats) and the claims of every placed instance."""
    return ClusterSnapshot.model_construct(workers=_worker_snapshots(session, utcnow(), timeout),
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
    lock = lock_ledger(session)
    rows = []
    for iid in instance_ids:
        row = session.get(InstanceRow, iid)
        if row is None:
            raise InstanceNotFound(f"instance {iid} not found; `gpufleet ps` lists instances")
        rows.append(row)
    if all(r.placement is not None for r in rows):
        return rows
    with _CACHE_LOCK:
        # taken out of the cache: an exception below leaves it out (it may hold claims the
        # database will not), and a rolled-back transaction leaves a token it does not match
        live, cache_key, ready_at = _live_ledger(session, lock, timeout)
        token, workers_version = lock.claims_token, lock.workers_version
        requests: dict[tuple[int, str], PlacementRequest] = {}
        placed = False
        for row in rows:
            if row.placement is not None:
                continue  # already placed (idempotent retry)
            config = json.dumps(row.config, sort_keys=True)
            key = (row.deployment_id, config)
            if key not in requests:
                requests[key] = _request(row, cache_key, config)
            result = live.place(requests[key], row.id)
            placed |= isinstance(result, Placement)
            _record(session, row, result, alone=len(rows) == 1)
        if placed:
            token = bump_claims_version(session)
        _CACHE[cache_key] = _Cached(token, workers_version, live, ready_at)
    return rows


# ---------------------------------------------------------------- the in-memory ledger
#
# Rebuilding the ledger for every placement reads every worker and every claim (28 ms per
# placement with 250 workers × 8 GPUs on SQLite, measured with benchmarks/placement_ledger.py).
# A server therefore keeps one LiveLedger per database and reuses it while the database holds
# the claims token this copy wrote and the same workers version; readiness (heartbeats) is
# re-read on every placement, two columns per worker. Any other writer — another server
# process, a deletion, a rolled-back transaction — changes the token, and the next placement
# rebuilds. The ledger row lock, taken first, stays the arbiter between processes.


@dataclass
class _Cached:
    token: str
    workers_version: int
    live: LiveLedger
    #: time.monotonic() when readiness was last read from the heartbeats
    ready_at: float = 0.0


#: readiness is re-read at most this often (seconds). Heartbeats arrive every few seconds and a
#: worker is lost only after WORKER_TIMEOUT_S (30 s), so a reading 0.25 s old changes no decision
#: that a fresh one would not make a heartbeat later; at hundreds of placements a second it saved
#: a query per placement (benchmarks/placement_ledger.py --through-server).
READINESS_REFRESH_S = 0.25


_CACHE: dict[str, _Cached] = {}  # keyed by database URL and engine
_CACHE_LOCK = threading.Lock()


def _live_ledger(session: Session, lock: LedgerLock, timeout: timedelta) -> tuple[LiveLedger, str, float]:
    """(the ledger to place with, its cache key, when its readiness was read), current with the
    database as ``lock`` read it."""
    bind = session.get_bind()
    key = f"{bind.url}#{id(bind)}"  # one copy per engine: two engines act as two server processes
    cached = _CACHE.pop(key, None)
    now, clock = utcnow(), time.monotonic()
    if cached is None or not lock.claims_token or cached.token != lock.claims_token:
        return LiveLedger(cluster_snapshot(session, timeout)), key, clock
    live = cached.live
    if cached.workers_version != lock.workers_version:
        live.sync_workers(_worker_snapshots(session, now, timeout))
    elif clock - cached.ready_at >= READINESS_REFRESH_S:
        _refresh_readiness(session, live, now, timeout)
    else:
        return live, key, cached.ready_at
    return live, key, clock


def _refresh_readiness(session: Session, live: LiveLedger, now: datetime, timeout: timedelta) -> None:
    """Readiness from heartbeats, read as the set of workers *without* a fresh one (usually
    none): one indexed-free scan in the database, not one Python row per worker per placement.
    Same rule as :func:`gpufleet.store.workers.fresh`: ready ⇔ last beat ≥ now − timeout."""
    cutoff = now - timeout
    stale = set(session.scalars(select(WorkerRow.name).where(
        (WorkerRow.last_heartbeat.is_(None)) | (WorkerRow.last_heartbeat < cutoff))))
    for name, worker in live.ledger.workers.items():
        ready = name not in stale
        if worker.ready != ready:
            live.set_ready(name, ready)


#: placement requests already built, by database, deployment (id and creation time: SQLite may
#: reuse the id of a deleted row) and instance configuration. A deployment's metadata is written
#: once, when it is created, so this never goes stale; validating the metadata and the
#: configuration again was a tenth of a one-replica placement.
_REQUESTS: dict[tuple[str, int, object, str], PlacementRequest] = {}


def _request(row: InstanceRow, cache_key: str, config: str) -> PlacementRequest:
    # through the relationship, not session.get: the instance then holds the deployment, so the
    # view built from it later reads it from memory (the session only references it weakly)
    dep = row.deployment
    key = (cache_key, dep.id, dep.created_at, config)
    request = _REQUESTS.get(key)
    if request is None:
        if len(_REQUESTS) >= 4096:
            _REQUESTS.clear()
        metadata = ModelMetadata.model_validate(dep.model_metadata) if dep.model_metadata else None
        request = PlacementRequest.from_config(dep.name, DeploymentConfig.model_validate(row.config), metadata)
        _REQUESTS[key] = request
    return request


def _record(session: Session, row: InstanceRow, result: Placement | Unplaceable, alone: bool) -> None:
    """Record the outcome on the instance. ``alone`` (the transaction places this one instance):
    one Core UPDATE, the row's attributes set as already stored — the ORM's unit of work costs a
    third of a one-replica placement; for many rows it batches the UPDATEs and is the cheaper."""
    values = _outcome(row, result)
    if not alone:
        for name, value in values.items():
            setattr(row, name, value)
        return
    session.execute(_INSTANCES.update().where(_INSTANCES.c.id == row.id).values(**values))
    for name, value in values.items():
        set_committed_value(row, name, value)


_INSTANCES = InstanceRow.__table__


def _outcome(row: InstanceRow, result: Placement | Unplaceable) -> dict[str, object]:
    current = InstanceState(row.state)
    if isinstance(result, Unplaceable):
        if current != InstanceState.PENDING:
            check_transition(current, InstanceState.PENDING)
        return {"state": InstanceState.PENDING, "state_message": UNPLACED_PREFIX + result.message(),
                "updated_at": utcnow()}
    check_transition(current, InstanceState.SCHEDULED)
    return {"placement": result.model_dump(mode="json"), "worker_name": result.worker,
            "state": InstanceState.SCHEDULED, "state_message": f"placed on {result.describe()}",
            "updated_at": utcnow()}


def plan_spec(session: Session, spec: DeploymentSpec, metadata: ModelMetadata | None,
              timeout: timedelta, cluster: ClusterSnapshot | None = None) -> PlanResult:
    """Dry run of every replica of ``spec`` against the live ledger (or ``cluster``); writes nothing."""
    snapshot = cluster if cluster is not None else cluster_snapshot(session, timeout)
    return plan_deployment(snapshot, PlacementRequest.from_config(spec.name, spec.config(), metadata), spec.replicas)
