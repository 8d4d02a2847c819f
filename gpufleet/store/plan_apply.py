"""Apply the reconcile plan's database actions in one transaction under the placement ledger.

The plan (:mod:`gpufleet.core.plan`) is pure; this module is its only writer. It observes a
deployment's rows, plans, applies the database actions (mark unreachable, create, mark for
removal, forget, place), and plans again on the result until only node actions remain —
those it returns, for the reconcile flow to dispatch. Placement, creation and removal
therefore happen in the same transaction, which first writes the ledger row, so they never
interleave with another placement, in this server process or another.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import null, select
from sqlalchemy.orm import Session

from gpufleet.core.plan import (
    Action,
    ActionKind,
    DesiredDeployment,
    ObservedInstance,
    ObservedWorker,
    PLANNED_STOP,
    Plan,
    PlanOptions,
    Timing,
    plan,
)
from gpufleet.core.rollout import outdated
from gpufleet.core.schemas import AppliedPlan, DeploymentConfig, ModelMetadata, NodeAction
from gpufleet.core.states import InstanceState, check_transition
from gpufleet.store import ledger
from gpufleet.store.models import DeploymentRow, InstanceRow, WorkerRow, utcnow
from gpufleet.store.repository import instance_view, track_lifecycle
from gpufleet.settings import plan_timing, time_scale
from gpufleet.store.workers import fresh

#: A plan applied on its own result converges in two rounds (count → place → serve), three
#: for an instance on a lost worker (unreachable → reschedule → place); the fourth is a guard
#: against a rule that keeps producing database actions.
MAX_ROUNDS = 4


class UnknownDeployment(LookupError):
    pass


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)  # SQLite returns naive datetimes


def observe_instance(row: InstanceRow) -> ObservedInstance:
    placement = row.placement or {}
    return ObservedInstance(
        id=row.id,
        state=InstanceState(row.state),
        updated_at=_aware(row.updated_at),
        deleting=row.deleting,
        worker=row.worker_name,
        part_workers=tuple(p["worker"] for p in placement.get("parts", ())),
        offloaded=bool(placement.get("offloaded")),
        score=float(placement.get("score", 0.0)),
        restart_count=row.restart_count,
        unplaced=row.state == InstanceState.PENDING and row.state_message.startswith(ledger.UNPLACED_PREFIX),
        next_restart_at=_aware(row.next_restart_at) if row.next_restart_at else None,
        running_since=_aware(row.running_since) if row.running_since else None,
        pinned=bool((row.config or {}).get("placement", {}).get("gpu_selector")),
        planned_stop=row.state == InstanceState.ERROR and row.state_message.startswith(PLANNED_STOP),
        outdated=outdated(row.config or {}, row.deployment.config or {}),
    )


def observe_workers(session: Session, now: datetime, timeout: timedelta) -> list[ObservedWorker]:
    rows = session.execute(select(WorkerRow.name, WorkerRow.last_heartbeat)).all()
    return [ObservedWorker(name, fresh(beat, now, timeout), _aware(beat) if beat else None) for name, beat in rows]


def desired(row: DeploymentRow) -> DesiredDeployment:
    """Restart on error and the lost-worker grace are read from the deployment, not the
    instance's copy of the config: they are policies, so an edit applies to running instances
    too. The grace is on the lifecycle clock (× GPUFLEET_TIME_SCALE) like the cluster's."""
    config = DeploymentConfig.model_validate(row.config)
    grace = config.lost_worker_grace_s * time_scale() if config.lost_worker_grace_s is not None else None
    return DesiredDeployment(row.name, row.replicas, row.deleting, config.restart_on_error,
                             rollout=row.rollout_max_unavailable or 0, lost_grace_s=grace)


def instance_rows(session: Session, dep: DeploymentRow) -> list[InstanceRow]:
    return list(session.scalars(select(InstanceRow).where(InstanceRow.deployment_id == dep.id)
                                .order_by(InstanceRow.id)).all())


def plan_for(session: Session, dep: DeploymentRow, now: datetime, timeout: timedelta,
             options: PlanOptions = PlanOptions(), timing: Timing | None = None,
             workers: Sequence[ObservedWorker] | None = None) -> Plan:
    """The plan for ``dep`` as the database stands (reads only). Worker readiness is judged
    by the wall clock (heartbeats are), the rest of the plan by ``now``; ``timing`` defaults
    to the settings' (GPUFLEET_TIME_SCALE …). ``workers``: observed once by a caller that
    plans many deployments (the controller's round), else read here."""
    rows = instance_rows(session, dep)
    if workers is None:
        workers = observe_workers(session, utcnow(), timeout)
    return plan(desired(dep), [observe_instance(r) for r in rows], workers, now, options, timing or plan_timing())


def apply_plan(session: Session, name: str, timeout: timedelta, *, stopped: Sequence[int] = (),
               retry_unplaced: bool = True, now: datetime | None = None) -> AppliedPlan:
    """Reconcile ``name`` in the database and return the node actions left.

    ``stopped``: instances marked for removal whose backends the caller has stopped; their
    records go first, releasing their claims (so instances waiting for that memory can be
    placed in the same call)."""
    ledger.lock_ledger(session)
    now = now or utcnow()
    dep = session.scalar(select(DeploymentRow).where(DeploymentRow.name == name))
    if dep is None:
        raise UnknownDeployment(f"deployment {name!r} not found; `gpufleet ls` lists deployments")
    result = AppliedPlan(deployment=name, exists=True)
    _forget_stopped(session, dep, stopped, result)
    options = PlanOptions(retry_unplaced=retry_unplaced)
    for _ in range(MAX_ROUNDS):
        current = plan_for(session, dep, now, timeout, options)
        if not current.database_actions:
            break
        placed = _apply(session, dep, current.database_actions, timeout, result)
        session.flush()
        if not result.exists:
            return result
        options = PlanOptions(retry_unplaced=False, fresh=frozenset(placed) | options.fresh)
    else:
        current = plan_for(session, dep, now, timeout, options)  # the node actions of the last round's result
    rollout_progress(session, dep)
    return _with_node_actions(session, dep, current, result)


def _forget_stopped(session: Session, dep: DeploymentRow, stopped: Sequence[int], result: AppliedPlan) -> None:
    released = False
    for iid in stopped:
        row = session.get(InstanceRow, iid)
        if row is None or row.deployment_id != dep.id or not row.deleting:
            continue  # gone already, or not ours to forget: only removals are stopped
        released |= row.placement is not None
        session.delete(row)
        result.forgotten.append(iid)
    if released:
        ledger.bump_claims_version(session)
    session.flush()


def _apply(session: Session, dep: DeploymentRow, actions: Sequence[Action], timeout: timedelta,
           result: AppliedPlan) -> list[int]:
    """Apply database actions in plan order; returns the instances placed."""
    rows = {r.id: r for r in instance_rows(session, dep)}
    to_place: list[int] = []
    released = False
    for action in actions:
        row = rows.get(action.instance) if action.instance is not None else None
        match action.kind:
            case ActionKind.MARK_UNREACHABLE:
                assert row is not None
                mark_unreachable(row, action)
                result.unreachable.append(row.id)
            case ActionKind.RESET_BACKOFF:
                assert row is not None
                reset_backoff(row)
            case ActionKind.SCHEDULE_RESTART:
                assert row is not None
                schedule_restart(row, action)
            case ActionKind.RESCHEDULE:
                assert row is not None
                release(row, action)
                released = True
                result.released.append(row.id)
            case ActionKind.CREATE:
                result.created += create_instances(session, dep, action.count)
            case ActionKind.MARK_FOR_REMOVAL:
                assert row is not None
                row.deleting, row.updated_at = True, utcnow()
            case ActionKind.FORGET:
                assert row is not None
                released |= row.placement is not None
                session.delete(row)
                result.forgotten.append(row.id)
            case ActionKind.FORGET_DEPLOYMENT:
                session.delete(dep)
                result.exists = False
            case ActionKind.RELEASE:
                assert row is not None
                release(row, action)
                released = True
                result.released.append(row.id)
            case ActionKind.PLACE:
                assert action.instance is not None
                to_place.append(action.instance)
            case ActionKind.ROLLOUT_DONE | ActionKind.ROLLOUT_STOPPED:
                end_rollout(dep, action, row)
    if released:
        ledger.bump_claims_version(session)
    session.flush()
    for iid in result.released:
        if (row := rows.get(iid)) is not None:
            session.expire(row, ["placement"])  # reload SQL NULL as None
    if not to_place:
        return []
    placed = []
    for row in ledger.place_instances(session, to_place, timeout):
        if row.placement is not None:
            result.placed[row.id] = row.worker_name or ""
            result.unplaced.pop(row.id, None)
            placed.append(row.id)
        else:
            result.unplaced[row.id] = row.state_message
    return placed


def end_rollout(dep: DeploymentRow, action: Action, failed: InstanceRow | None) -> None:
    """The rollout is over; its status says how, and for a stop, what the failed instance said."""
    status = action.reason
    if action.kind == ActionKind.ROLLOUT_STOPPED and failed is not None and failed.state_message:
        status += f". Instance {failed.id} said: {failed.state_message.strip()}"
    dep.rollout_max_unavailable, dep.rollout_status, dep.updated_at = None, status, utcnow()


def rollout_progress(session: Session, dep: DeploymentRow) -> None:
    """While a rollout runs, its status counts what is left (for `gpufleet edit` waiting)."""
    if dep.rollout_max_unavailable is None:
        return
    live = [r for r in instance_rows(session, dep) if not r.deleting]
    left = sum(outdated(r.config or {}, dep.config or {}) for r in live)
    running = sum(r.state == InstanceState.RUNNING and not outdated(r.config or {}, dep.config or {}) for r in live)
    dep.rollout_status = (f"rolling out generation {dep.generation} ({dep.rollout_max_unavailable} at a time): "
                          f"{left} outdated instance(s) left, {running} of {dep.replicas} new RUNNING")


def release(row: InstanceRow, action: Action) -> None:
    """Give up a placement (one that never started, or one on a worker lost past the grace):
    its claims go, the instance is PENDING again and is placed anew."""
    check_transition(InstanceState(row.state), InstanceState.PENDING)
    track_lifecycle(row, InstanceState.PENDING)
    row.port = row.pid = None
    # SQL NULL (the claim ledger selects `placement IS NOT NULL`), not JSON null
    row.placement, row.worker_name, row.rpc_servers = null(), None, []
    row.state, row.state_message, row.updated_at = InstanceState.PENDING, action.reason, utcnow()


def reset_backoff(row: InstanceRow) -> None:
    """A stable run: the next failure restarts at once again."""
    row.restart_count = 0


def schedule_restart(row: InstanceRow, action: Action) -> None:
    """Store when the plan restarts this instance (a server restart keeps the back-off)."""
    assert action.at is not None
    row.next_restart_at = action.at


def mark_unreachable(row: InstanceRow, action: Action) -> None:
    check_transition(InstanceState(row.state), InstanceState.UNREACHABLE)
    track_lifecycle(row, InstanceState.UNREACHABLE)
    row.state, row.state_message, row.updated_at = InstanceState.UNREACHABLE, action.reason, utcnow()


def create_instances(session: Session, dep: DeploymentRow, count: int) -> list[int]:
    """PENDING instances, each with a copy of the deployment's current configuration: this is
    why an edit changes new instances only."""
    rows = [InstanceRow(name=name, deployment_id=dep.id, state=InstanceState.PENDING,
                        state_message="waiting to be placed", config=dep.config, generation=dep.generation)
            for name in unused_names(session, dep.name, count)]
    session.add_all(rows)
    session.flush()
    return [r.id for r in rows]


def unused_names(session: Session, prefix: str, count: int) -> list[str]:
    """``count`` new instance names ``<deployment>-<8 hex digits>``: random (a name must not
    say how many came before), and checked against the database and each other, because at
    thousands of instances a random suffix does collide (with 6 digits, 2,000 instances
    collide with probability ≈ 2000² / 2 / 16.8 M ≈ 12 %)."""
    names: set[str] = set()
    while len(names) < count:
        candidates = {f"{prefix}-{secrets.token_hex(4)}" for _ in range(count - len(names))} - names
        taken = set(session.scalars(select(InstanceRow.name).where(InstanceRow.name.in_(candidates))).all())
        names |= candidates - taken
    return sorted(names)


def create_missing(session: Session, name: str) -> list[int]:
    """Only the CREATE step of the plan, unplaced (tests and benchmarks that place by hand)."""
    dep = session.scalar(select(DeploymentRow).where(DeploymentRow.name == name))
    if dep is None:
        raise UnknownDeployment(f"deployment {name!r} not found")
    live = sum(1 for r in instance_rows(session, dep) if not r.deleting)
    return create_instances(session, dep, max(0, dep.replicas - live))


def _with_node_actions(session: Session, dep: DeploymentRow, final: Plan, result: AppliedPlan) -> AppliedPlan:
    result.node_actions = [
        NodeAction(kind=a.kind.value, instance=a.instance, worker=a.worker, reason=a.reason)  # type: ignore[arg-type]
        for a in final.node_actions if a.instance is not None and a.worker is not None
    ]
    named = {a.instance for a in result.node_actions}
    result.instances = [instance_view(r) for r in instance_rows(session, dep) if r.id in named]
    workers = {a.worker for a in result.node_actions}
    if workers:
        rows = session.execute(select(WorkerRow.name, WorkerRow.address).where(WorkerRow.name.in_(workers))).all()
        result.worker_addresses = {n: a for n, a in rows if a}
    result.metadata = ModelMetadata.model_validate(dep.model_metadata) if dep.model_metadata else None
    return result
