"""The reconcile plan: what must happen to make a deployment's instances match its spec.

*Reconcile* is the whole loop (observe → plan → apply → observe); the *plan* is its
one decision, made here and nowhere else. It is a pure function of what the
database holds — the deployment's desired spec, its instances, the workers and
the clock — and returns typed actions, each with the reason it is needed:

======================  ==========  ====================================================
action                  applied by  when
======================  ==========  ====================================================
``MARK_UNREACHABLE``    server      a worker of a live instance stopped its heartbeats
``CREATE``              server      fewer live instances than replicas (``count`` of them)
``MARK_FOR_REMOVAL``    server      more live instances than replicas, worst first
``FORGET``              server      an instance marked for removal that runs nowhere, or
                                    (after its ``STOP`` runs) one that did
``FORGET_DEPLOYMENT``   server      a deployment being deleted with no instance left
``RELEASE``             server      a placed instance never started whose worker was lost:
                                    its claim goes and it is placed again
``PLACE``               server      a live instance without a placement
``STOP``                node        an instance marked for removal, on each of its workers
``SERVE_RPC``           node        RPC servers of a distributed instance, on a part worker
``SERVE``               node        a placed instance that was never started
``RESTART``             node        an instance in ERROR whose back-off has elapsed
======================  ==========  ====================================================

The server applies the database actions atomically under the placement ledger, plans
again on the result, and hands the node actions to the ``reconcile`` flow, which
dispatches them as one Prefect run per worker and operation. The controller runs the
same plan to decide when a deployment needs a ``reconcile`` or ``restart`` run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from gpufleet.core.states import REMOVAL_ORDER, InstanceState

S = InstanceState

#: Unhealthy states, worst first (scale-down removes these before healthy ones).
UNHEALTHY = (S.ERROR, S.UNREACHABLE)
#: States in which a backend may run on the instance's workers (watched for lost heartbeats).
ON_NODE = (S.DOWNLOADING, S.STARTING, S.RUNNING)
#: A placed instance nobody has started for this long lost its serve run; serve it again.
#: Shorter and a second reconcile run might start it twice while the first is on its way
#: (the node's registry makes that harmless, but it costs a Prefect run).
STALE_SCHEDULED_S = 30.0
#: Restart back-off: 10 s × 2^restarts, capped at 5 minutes (GPUStack and Kubernetes'
#: CrashLoopBackOff use the same shape; Kubernetes starts at 10 s and caps at 300 s).
RESTART_BASE_S = 10.0
RESTART_CAP_S = 300.0
#: The reason of a PLACE action for an instance that did not fit before.
RETRY_UNPLACED = "did not fit earlier; the cluster changed"


class ActionKind(StrEnum):
    MARK_UNREACHABLE = "mark-unreachable"
    CREATE = "create"
    MARK_FOR_REMOVAL = "mark-for-removal"
    FORGET = "forget"
    FORGET_DEPLOYMENT = "forget-deployment"
    RELEASE = "release"
    PLACE = "place"
    STOP = "stop"
    SERVE_RPC = "serve-rpc"
    SERVE = "serve"
    RESTART = "restart"


#: Actions the server applies to its database; the rest run on nodes.
DATABASE_ACTIONS = frozenset({
    ActionKind.MARK_UNREACHABLE, ActionKind.CREATE, ActionKind.MARK_FOR_REMOVAL,
    ActionKind.FORGET, ActionKind.FORGET_DEPLOYMENT, ActionKind.RELEASE, ActionKind.PLACE,
})


@dataclass(frozen=True)
class Action:
    """One step of a plan. ``instance`` is None for deployment-wide actions; ``worker`` is
    the gpufleet worker (machine) a node action runs on; ``count`` is used by CREATE."""

    kind: ActionKind
    reason: str
    instance: int | None = None
    worker: str | None = None
    count: int = 0

    @property
    def on_node(self) -> bool:
        return self.kind not in DATABASE_ACTIONS


@dataclass(frozen=True)
class DesiredDeployment:
    name: str
    replicas: int
    deleting: bool = False


@dataclass(frozen=True)
class ObservedInstance:
    """What the plan needs to know of an instance.

    ``worker`` is its main worker and ``part_workers`` the other workers of a distributed
    instance (each runs RPC servers for it); both are empty until it is placed.
    ``unplaced`` is set when placement was tried and nothing fitted (the message says why).
    """

    id: int
    state: InstanceState
    updated_at: datetime
    deleting: bool = False
    worker: str | None = None
    part_workers: tuple[str, ...] = ()
    offloaded: bool = False
    score: float = 0.0
    restart_count: int = 0
    unplaced: bool = False

    @property
    def placed(self) -> bool:
        return self.worker is not None

    @property
    def workers(self) -> tuple[str, ...]:
        return ((self.worker,) if self.worker else ()) + self.part_workers


@dataclass(frozen=True)
class ObservedWorker:
    name: str
    ready: bool
    last_heartbeat: datetime | None = None


@dataclass(frozen=True)
class PlanOptions:
    """How much of the plan to make.

    ``retry_unplaced``: place instances again that did not fit earlier (the flow always
    does; the controller only after the cluster changed). ``fresh``: instances placed in
    this round, served at once (older SCHEDULED ones only once they are stale).
    """

    retry_unplaced: bool = True
    fresh: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Plan:
    deployment: str
    actions: tuple[Action, ...]

    def of(self, *kinds: ActionKind) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind in kinds)

    @property
    def database_actions(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if not a.on_node)

    @property
    def node_actions(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.on_node)

    @property
    def empty(self) -> bool:
        return not self.actions


def plan(
    deployment: DesiredDeployment,
    instances: Sequence[ObservedInstance],
    workers: Iterable[ObservedWorker],
    now: datetime,
    options: PlanOptions = PlanOptions(),
) -> Plan:
    """The actions, in the order they must be applied: database first (unreachable, count,
    forget, place), then node actions (stop before serve, RPC servers before their main)."""
    if deployment.replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {deployment.replicas}")
    by_name = {w.name: w for w in workers}
    count = _count(deployment, instances)
    marked = {a.instance for a in count if a.kind == ActionKind.MARK_FOR_REMOVAL}
    # what the instances will be once the count step is applied: the marked ones are removing
    after = [replace(i, deleting=True) if i.id in marked else i for i in instances]
    actions = [
        *_unreachable(instances, by_name),
        *count,
        *_forget(deployment, after),
        *_release(after, by_name),
        *_place(after, options),
        *_stop(after),
        *_serve(after, by_name, now, options),
        *_restart(deployment, after, by_name, now),
    ]
    return Plan(deployment.name, tuple(actions))


def _unreachable(instances: Sequence[ObservedInstance], workers: dict[str, ObservedWorker]) -> list[Action]:
    actions = []
    for inst in instances:
        if inst.deleting or inst.state not in ON_NODE:
            continue
        for role, name in [("worker", inst.worker), *(("part worker", p) for p in inst.part_workers)]:
            worker = workers.get(name or "")
            if worker is not None and not worker.ready:
                seen = worker.last_heartbeat.isoformat(timespec="seconds") if worker.last_heartbeat else "never"
                actions.append(Action(ActionKind.MARK_UNREACHABLE, instance=inst.id, worker=name,
                                      reason=f"{role} {name} stopped sending heartbeats (last {seen})"))
                break
    return actions


def removal_key(inst: ObservedInstance) -> tuple[int, int, int, float, int, int]:
    """Worst first:

    1. unhealthy: ERROR, then UNREACHABLE;
    2. not placed yet (nothing to stop, nothing to lose);
    3. partially offloaded to the CPU (slow, and holding RAM);
    4. lower placement score (the placement the strategy likes least);
    5. less far along (STARTING before RUNNING), then newest first — an older
       healthy instance has proven itself and may hold warm caches.
    """
    unhealthy = UNHEALTHY.index(inst.state) if inst.state in UNHEALTHY else len(UNHEALTHY)
    return (unhealthy, int(inst.placed), int(not inst.offloaded), inst.score,
            REMOVAL_ORDER.index(inst.state), -inst.id)


def _count(deployment: DesiredDeployment, instances: Sequence[ObservedInstance]) -> list[Action]:
    """Instances already marked for removal do not count towards the replicas."""
    desired = 0 if deployment.deleting else deployment.replicas
    live = [i for i in instances if not i.deleting]
    if len(live) < desired:
        missing = desired - len(live)
        return [Action(ActionKind.CREATE, count=missing,
                       reason=f"{len(live)} of {desired} replicas exist; creating {missing}")]
    surplus = sorted(live, key=removal_key)[: len(live) - desired]
    why = "the deployment is being deleted" if deployment.deleting else f"{len(live)} replicas exist, {desired} wanted"
    return [Action(ActionKind.MARK_FOR_REMOVAL, instance=i.id, reason=f"{why}; {_describe(i)}") for i in surplus]


def _describe(inst: ObservedInstance) -> str:
    where = f" on {inst.worker}" if inst.worker else ", not placed"
    return f"{inst.state}{where}"


def _forget(deployment: DesiredDeployment, instances: Sequence[ObservedInstance]) -> list[Action]:
    """Instances marked for removal (now or earlier) that hold no placement have nothing to
    stop; a deleted deployment goes once none of its instances is placed (all are removed)."""
    actions = [Action(ActionKind.FORGET, instance=i.id, reason="marked for removal and runs nowhere")
               for i in instances if i.deleting and not i.placed]
    if deployment.deleting and not any(i.placed for i in instances):
        actions.append(Action(ActionKind.FORGET_DEPLOYMENT, reason="deleted, and none of its instances runs"))
    return actions


def _lost(inst: ObservedInstance, workers: dict[str, ObservedWorker]) -> str | None:
    """The first of the instance's workers that is known and not ready."""
    return next((w for w in inst.workers if w in workers and not workers[w].ready), None)


def _release(instances: Sequence[ObservedInstance], workers: dict[str, ObservedWorker]) -> list[Action]:
    """SCHEDULED means placed and not started: nothing runs yet, so a placement on a worker that
    stopped its heartbeats is given up and placed again (a node that comes back and still
    picks up the old serve run finds the instance placed elsewhere and leaves it)."""
    return [Action(ActionKind.RELEASE, instance=i.id, worker=lost,
                   reason=f"placed on {lost}, which stopped sending heartbeats before starting it")
            for i in instances
            if not i.deleting and i.state == S.SCHEDULED and (lost := _lost(i, workers)) is not None]


def _place(instances: Sequence[ObservedInstance], options: PlanOptions) -> list[Action]:
    """Live instances without a placement (PENDING, or ANALYZING left by an older run)."""
    actions = []
    for inst in instances:
        if inst.deleting or inst.placed or inst.state not in (S.PENDING, S.ANALYZING):
            continue
        if inst.unplaced and not options.retry_unplaced:
            continue
        reason = RETRY_UNPLACED if inst.unplaced else "new instance"
        actions.append(Action(ActionKind.PLACE, instance=inst.id, reason=reason))
    return actions


def _stop(instances: Sequence[ObservedInstance]) -> list[Action]:
    return [Action(ActionKind.STOP, instance=i.id, worker=w, reason="marked for removal")
            for i in instances if i.deleting for w in i.workers]


def _serve(instances: Sequence[ObservedInstance], workers: dict[str, ObservedWorker], now: datetime,
           options: PlanOptions) -> list[Action]:
    """Placed and never started: at once when placed in this round, else once stale (its
    serve run was lost). A distributed instance's RPC servers come before its main server.
    Not on a lost worker (that placement is released instead)."""
    actions = []
    for inst in instances:
        if inst.deleting or inst.state != S.SCHEDULED or not inst.placed or _lost(inst, workers):
            continue
        age = (now - inst.updated_at).total_seconds()
        if inst.id in options.fresh:
            reason = "placed"
        elif age >= STALE_SCHEDULED_S:
            reason = f"placed {age:.0f} s ago and never started"
        else:
            continue
        actions += [Action(ActionKind.SERVE_RPC, instance=inst.id, worker=p, reason=reason) for p in inst.part_workers]
        actions.append(Action(ActionKind.SERVE, instance=inst.id, worker=inst.worker, reason=reason))
    return actions


def restart_delay_seconds(restart_count: int, base: float = RESTART_BASE_S, cap: float = RESTART_CAP_S) -> float:
    """Exponential back-off before restarting a failed instance: base × 2^n, capped."""
    if restart_count < 0:
        raise ValueError("restart_count must be >= 0")
    return min(cap, base * (2 ** min(restart_count, 32)))


def _restart(deployment: DesiredDeployment, instances: Sequence[ObservedInstance],
             workers: dict[str, ObservedWorker], now: datetime) -> list[Action]:
    """ERROR instances on ready workers, once their back-off has elapsed."""
    if deployment.deleting:
        return []
    actions = []
    for inst in instances:
        if inst.deleting or inst.state != S.ERROR or not inst.placed:
            continue
        if _lost(inst, workers):
            continue  # restarted when its workers are back
        delay = restart_delay_seconds(inst.restart_count)
        waited = (now - inst.updated_at).total_seconds()
        if waited >= delay:
            actions.append(Action(ActionKind.RESTART, instance=inst.id, worker=inst.worker,
                                  reason=f"failed {waited:.0f} s ago; restart {inst.restart_count + 1} "
                                         f"after a {delay:.0f} s back-off"))
    return actions

