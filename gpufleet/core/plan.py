"""The reconcile plan: what must happen to make a deployment's instances match its spec.

*Reconcile* is the whole loop (observe → plan → apply → observe); the *plan* is its
one decision, made here and nowhere else. It is a pure function of what the
database holds — the deployment's desired spec, its instances, the workers and
the clock — and returns typed actions, each with the reason it is needed:

======================  ==========  ====================================================
action                  applied by  when
======================  ==========  ====================================================
``MARK_UNREACHABLE``    server      a worker of a placed instance stopped its heartbeats (or
                                    was removed), whatever the instance's state
``RESET_BACKOFF``       server      RUNNING healthy for the stable window: the restart
                                    count starts over
``CREATE``              server      fewer live instances than replicas (``count`` of them)
``MARK_FOR_REMOVAL``    server      more live instances than replicas, worst first
``FORGET``              server      an instance marked for removal that runs nowhere, or
                                    (after its ``STOP`` runs) one that did
``FORGET_DEPLOYMENT``   server      a deployment being deleted with no instance left
``RELEASE``             server      a placed instance never started whose worker was lost:
                                    its claim goes and it is placed again
``RESCHEDULE``          server      UNREACHABLE for longer than the lost-worker grace (or
                                    its worker was removed): its placement goes and it is
                                    placed again on another worker (not if its GPUs were
                                    chosen by hand)
``PLACE``               server      a live instance without a placement
``SCHEDULE_RESTART``    server      an instance in ERROR, restart on error on: the time of
                                    its next restart is stored (``at``)
``ROLLOUT_DONE``        server      a rollout (``edit --rollout``) with no outdated instance left
``ROLLOUT_STOPPED``     server      a rollout whose new instance failed or could not be placed:
                                    its new instances that do not run go, the old ones stay
``STOP``                node        an instance marked for removal, on each of its workers
``SERVE_RPC``           node        RPC servers of a distributed instance, on a part worker
``SERVE``               node        a placed instance that was never started
``RESTART``             node        an instance in ERROR whose stored restart time came
======================  ==========  ====================================================

The server applies the database actions atomically under the placement ledger, plans
again on the result, and hands the node actions to the ``reconcile`` flow, which
dispatches them as one Prefect run per worker and operation. The controller runs the
same plan to decide when a deployment needs a ``reconcile`` or ``restart`` run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from gpufleet.core.rollout import rollout_step
from gpufleet.core.states import REMOVAL_ORDER, InstanceState

S = InstanceState

#: Unhealthy states, worst first (scale-down removes these before healthy ones).
UNHEALTHY = (S.ERROR, S.UNREACHABLE)
#: States in which a backend may run on the instance's workers (watched for lost heartbeats).
ON_NODE = (S.DOWNLOADING, S.STARTING, S.RUNNING)
#: Placed states that become UNREACHABLE with their worker (SCHEDULED is released instead).
MARKED_UNREACHABLE = (*ON_NODE, S.ERROR)
#: A placed instance nobody has started for this long lost its serve run; serve it again.
#: Shorter and a second reconcile run might start it twice while the first is on its way
#: (the node's registry makes that harmless, but it costs a Prefect run).
STALE_SCHEDULED_S = 30.0
#: Restart back-off, Kubernetes' CrashLoopBackOff shape: the first restart at once, then
#: 10 s, 20 s, 40 s … capped at 300 s; it starts over after a stable healthy window.
RESTART_BASE_S = 10.0
RESTART_CAP_S = 300.0
STABLE_WINDOW_S = 600.0
#: How long instances wait on a lost worker before they are placed on another one.
LOST_WORKER_GRACE_S = 300.0
#: Restarts without a stable window in between after which an instance is crash-looping.
CRASH_LOOP_AFTER = 3
#: How a node agent's ERROR report begins for a backend it stopped on purpose when it exited
#: (`gpufleet down`): not a crash, so it comes back at once, without back-off or count.
PLANNED_STOP = "stopped on purpose with its node"
#: The reason of a PLACE action for an instance that did not fit before.
RETRY_UNPLACED = "did not fit earlier; the cluster changed"


class ActionKind(StrEnum):
    MARK_UNREACHABLE = "mark-unreachable"
    RESET_BACKOFF = "reset-backoff"
    CREATE = "create"
    MARK_FOR_REMOVAL = "mark-for-removal"
    FORGET = "forget"
    FORGET_DEPLOYMENT = "forget-deployment"
    RELEASE = "release"
    RESCHEDULE = "reschedule"
    PLACE = "place"
    SCHEDULE_RESTART = "schedule-restart"
    STOP = "stop"
    SERVE_RPC = "serve-rpc"
    SERVE = "serve"
    RESTART = "restart"
    ROLLOUT_DONE = "rollout-done"
    ROLLOUT_STOPPED = "rollout-stopped"


#: Actions the server applies to its database; the rest run on nodes.
DATABASE_ACTIONS = frozenset({
    ActionKind.MARK_UNREACHABLE, ActionKind.RESET_BACKOFF, ActionKind.CREATE, ActionKind.MARK_FOR_REMOVAL,
    ActionKind.FORGET, ActionKind.FORGET_DEPLOYMENT, ActionKind.RELEASE, ActionKind.RESCHEDULE, ActionKind.PLACE,
    ActionKind.SCHEDULE_RESTART, ActionKind.ROLLOUT_DONE, ActionKind.ROLLOUT_STOPPED,
})


@dataclass(frozen=True)
class Timing:
    """The durations the plan's rules wait for. Settings build it (``GPUFLEET_TIME_SCALE``
    compresses every one of them, so tests see the real schedule in seconds, not minutes)."""

    restart_base_s: float = RESTART_BASE_S
    restart_cap_s: float = RESTART_CAP_S
    stable_window_s: float = STABLE_WINDOW_S
    lost_grace_s: float = LOST_WORKER_GRACE_S
    crash_loop_after: int = CRASH_LOOP_AFTER

    def __post_init__(self) -> None:
        for name in ("restart_base_s", "restart_cap_s", "stable_window_s", "lost_grace_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def scaled(self, factor: float) -> Timing:
        """Every duration × ``factor`` (0.01: a 300 s cap becomes 3 s)."""
        if factor <= 0:
            raise ValueError(f"time scale must be > 0, got {factor}")
        return replace(self, restart_base_s=self.restart_base_s * factor, restart_cap_s=self.restart_cap_s * factor,
                       stable_window_s=self.stable_window_s * factor, lost_grace_s=self.lost_grace_s * factor)


@dataclass(frozen=True)
class Action:
    """One step of a plan. ``instance`` is None for deployment-wide actions; ``worker`` is
    the gpufleet worker (machine) a node action runs on; ``count`` is used by CREATE and
    ``at`` by SCHEDULE_RESTART (when the restart is due)."""

    kind: ActionKind
    reason: str
    instance: int | None = None
    worker: str | None = None
    count: int = 0
    at: datetime | None = None

    @property
    def on_node(self) -> bool:
        return self.kind not in DATABASE_ACTIONS


@dataclass(frozen=True)
class DesiredDeployment:
    """``rollout``: N of ``edit --rollout --max-unavailable N`` while a rollout runs, else 0;
    ``lost_grace_s``: this deployment's lost-worker grace (None: the cluster's)."""

    name: str
    replicas: int
    deleting: bool = False
    restart_on_error: bool = True
    rollout: int = 0
    lost_grace_s: float | None = None


@dataclass(frozen=True)
class ObservedInstance:
    """What the plan needs to know of an instance.

    ``worker`` is its main worker and ``part_workers`` the other workers of a distributed
    instance (each runs RPC servers for it); both are empty until it is placed.
    ``unplaced`` is set when placement was tried and nothing fitted (the message says why).
    ``next_restart_at``: the stored time of its next restart (ERROR only); ``running_since``:
    when it last became RUNNING; ``pinned``: its GPUs were chosen by hand (never moved);
    ``planned_stop``: its ERROR is a backend its node stopped on purpose (not a crash);
    ``outdated``: launched with another configuration than the deployment's (an edit since).
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
    next_restart_at: datetime | None = None
    running_since: datetime | None = None
    pinned: bool = False
    planned_stop: bool = False
    outdated: bool = False

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
    timing: Timing = Timing(),
) -> Plan:
    """The actions, in the order they must be applied: database first (unreachable, count,
    forget, release and reschedule, place, restart times), then node actions (stop before
    serve, RPC servers before their main, restarts)."""
    if deployment.replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {deployment.replicas}")
    by_name = {w.name: w for w in workers}
    rolling = deployment.rollout > 0 and not deployment.deleting
    rollout, count = _rollout(deployment, instances) if rolling else ([], _count(deployment, instances))
    marked = {a.instance for a in count if a.kind == ActionKind.MARK_FOR_REMOVAL}
    # what the instances will be once the count step is applied: the marked ones are removing
    after = [replace(i, deleting=True) if i.id in marked else i for i in instances]
    schedule, restart = _restart(deployment, after, by_name, now, timing)
    actions = [
        *_unreachable(instances, by_name),
        *_reset_backoff(instances, now, timing),
        *rollout,
        *count,
        *_forget(deployment, after, by_name),
        *_release(after, by_name),
        *_reschedule(instances, by_name, now, _grace(deployment, timing)),
        *_place(after, options),
        *schedule,
        *_stop(after, by_name),
        *_serve(after, by_name, now, options),
        *restart,
    ]
    return Plan(deployment.name, tuple(actions))


def _lost(inst: ObservedInstance, workers: dict[str, ObservedWorker]) -> str | None:
    """The first of the instance's workers that stopped its heartbeats or was removed
    (``gpufleet workers rm``: no longer in ``workers``)."""
    return next((w for w in inst.workers if w not in workers or not workers[w].ready), None)


def _lost_why(name: str, workers: dict[str, ObservedWorker]) -> str:
    worker = workers.get(name)
    if worker is None:
        return f"{name} was removed from the cluster"
    seen = worker.last_heartbeat.isoformat(timespec="seconds") if worker.last_heartbeat else "never"
    return f"{name} stopped sending heartbeats (last {seen})"


def _lost_for(name: str, workers: dict[str, ObservedWorker], now: datetime) -> float:
    """Seconds since ``name``'s last heartbeat (infinite once it was removed)."""
    worker = workers.get(name)
    if worker is None or worker.last_heartbeat is None:
        return float("inf")
    return (now - worker.last_heartbeat).total_seconds()


def _unreachable(instances: Sequence[ObservedInstance], workers: dict[str, ObservedWorker]) -> list[Action]:
    """Whatever its state (ERROR included: it cannot be restarted there), an instance with a
    lost worker is UNREACHABLE; one whose GPUs were chosen by hand is told it stays."""
    actions = []
    for inst in instances:
        if inst.deleting or inst.state not in MARKED_UNREACHABLE:
            continue
        lost = _lost(inst, workers)
        if lost is None:
            continue
        role = "worker" if lost == inst.worker else "part worker"
        stays = "; its GPUs were chosen by hand (--gpu), so it is not moved and waits for the worker" \
            if inst.pinned else ""
        actions.append(Action(ActionKind.MARK_UNREACHABLE, instance=inst.id, worker=lost,
                              reason=f"{role} {_lost_why(lost, workers)}{stays}"))
    return actions


def _reset_backoff(instances: Sequence[ObservedInstance], now: datetime, timing: Timing) -> list[Action]:
    """Kubernetes' rule: only a run healthy for the stable window clears the restart count,
    so one crash a week restarts at once while a flapping model keeps its back-off."""
    actions = []
    for inst in instances:
        if inst.state != S.RUNNING or inst.restart_count == 0 or inst.running_since is None:
            continue
        healthy = (now - inst.running_since).total_seconds()
        if healthy >= timing.stable_window_s:
            actions.append(Action(ActionKind.RESET_BACKOFF, instance=inst.id, worker=inst.worker,
                                  reason=f"RUNNING healthy for {healthy:.0f} s ≥ {timing.stable_window_s:g} s; "
                                         f"{inst.restart_count} restarts forgotten"))
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



def _rollout(deployment: DesiredDeployment, instances: Sequence[ObservedInstance]) -> tuple[list[Action], list[Action]]:
    """A rollout's round (see :mod:`gpufleet.core.rollout`): ROLLOUT_DONE or ROLLOUT_STOPPED
    when it ends, and the count actions that replace ``_count`` meanwhile.

    A new instance in ERROR (not a planned stop) or one that could not be placed stops the
    rollout: the new instances that do not run are marked for removal — no restart of a
    configuration that just failed — and the rest is counted as without a rollout, so the
    old instances keep serving."""
    live = [i for i in instances if not i.deleting]
    old = [i for i in live if i.outdated]
    new = [i for i in live if not i.outdated]
    failed = next((i for i in new if (i.state == S.ERROR and not i.planned_stop) or i.unplaced), None)
    if failed is not None:
        how = "could not be placed" if failed.unplaced else f"failed on {failed.worker}"
        why = (f"rollout stopped: instance {failed.id} of the new configuration {how}; "
               f"{len(old)} instance(s) of the previous configuration keep serving")
        dropped = [i for i in new if i.state != S.RUNNING]
        marks = [Action(ActionKind.MARK_FOR_REMOVAL, instance=i.id, worker=i.worker, reason=why) for i in dropped]
        rest = [replace(i, deleting=True) if i in dropped else i for i in instances]
        return [Action(ActionKind.ROLLOUT_STOPPED, instance=failed.id, reason=why)], marks + _count(deployment, rest)
    if not old and not any(i.outdated for i in instances):  # done once the old ones are stopped and forgotten
        done = Action(ActionKind.ROLLOUT_DONE, reason=f"rollout done: {len(new)} instance(s) run the new configuration")
        return [done], _count(deployment, instances)
    running = [i for i in new if i.state == S.RUNNING]
    step = rollout_step(deployment.replicas, deployment.rollout, len(old), len(new), len(running))
    actions = []
    if step.create:
        actions.append(Action(ActionKind.CREATE, count=step.create,
                              reason=f"rollout: {len(old)} outdated, {len(running)} of {deployment.replicas} new "
                                     f"RUNNING; creating {step.create} (at most {deployment.rollout} at a time)"))
    for inst in sorted(old, key=removal_key)[: step.remove_old]:
        actions.append(Action(ActionKind.MARK_FOR_REMOVAL, instance=inst.id, worker=inst.worker,
                              reason=f"rollout: replaced by a RUNNING instance of the new configuration; "
                                     f"{_describe(inst)}"))
    for inst in sorted(new, key=removal_key)[: step.remove_new]:
        actions.append(Action(ActionKind.MARK_FOR_REMOVAL, instance=inst.id, worker=inst.worker,
                              reason=f"{len(new)} new instances, {deployment.replicas} wanted; {_describe(inst)}"))
    return [], actions


def _grace(deployment: DesiredDeployment, timing: Timing) -> Timing:
    """The deployment's own lost-worker grace, when it has one, over the cluster's."""
    if deployment.lost_grace_s is None:
        return timing
    return replace(timing, lost_grace_s=deployment.lost_grace_s)


def _describe(inst: ObservedInstance) -> str:
    where = f" on {inst.worker}" if inst.worker else ", not placed"
    return f"{inst.state}{where}"



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



def _forget(deployment: DesiredDeployment, instances: Sequence[ObservedInstance],
            workers: dict[str, ObservedWorker]) -> list[Action]:
    """Instances marked for removal that hold no placement have nothing to stop, nor have those
    whose every worker is lost: they go at once, releasing their claims (the node stops what is
    left of them when it returns, as backends of instances it no longer has). A deleted
    deployment goes once none of its instances is placed (all are removed)."""
    actions = []
    for inst in instances:
        if not inst.deleting:
            continue
        if not inst.placed:
            actions.append(Action(ActionKind.FORGET, instance=inst.id, reason="marked for removal and runs nowhere"))
        elif all(w not in workers or not workers[w].ready for w in inst.workers):
            actions.append(Action(ActionKind.FORGET, instance=inst.id, worker=inst.worker,
                                  reason=f"marked for removal; {_lost_why(inst.worker or '', workers)}, "
                                         f"which stops it when it returns"))
    forgotten = {a.instance for a in actions}
    if deployment.deleting and not any(i.placed and i.id not in forgotten for i in instances):
        actions.append(Action(ActionKind.FORGET_DEPLOYMENT, reason="deleted, and none of its instances runs"))
    return actions


def _release(instances: Sequence[ObservedInstance], workers: dict[str, ObservedWorker]) -> list[Action]:
    """SCHEDULED means placed and not started: nothing runs yet, so a placement on a worker that
    stopped its heartbeats is given up and placed again (a node that comes back and still
    picks up the old serve run finds the instance placed elsewhere and leaves it)."""
    return [Action(ActionKind.RELEASE, instance=i.id, worker=lost,
                   reason=f"placed on {lost}, which stopped sending heartbeats before starting it")
            for i in instances
            if not i.deleting and i.state == S.SCHEDULED and (lost := _lost(i, workers)) is not None]


def _reschedule(instances: Sequence[ObservedInstance], workers: dict[str, ObservedWorker], now: datetime,
                timing: Timing) -> list[Action]:
    """UNREACHABLE past the grace: the worker is taken for gone, and the instance is placed
    elsewhere (its old backend, if the worker returns, is stopped there by the node agent,
    since the instance is no longer placed on it). Not an instance whose GPUs were chosen by
    hand: it is never moved silently."""
    actions = []
    for inst in instances:
        if inst.deleting or inst.state != S.UNREACHABLE or inst.pinned:
            continue
        lost = _lost(inst, workers)
        if lost is None:
            continue
        gone_for = _lost_for(lost, workers, now)
        if gone_for >= timing.lost_grace_s:
            waited = "removed" if gone_for == float("inf") else f"silent for {gone_for:.0f} s"
            actions.append(Action(ActionKind.RESCHEDULE, instance=inst.id, worker=lost,
                                  reason=f"worker {lost} {waited} (grace {timing.lost_grace_s:g} s); "
                                         f"placing it on another worker"))
    return actions


def _stop(instances: Sequence[ObservedInstance], workers: dict[str, ObservedWorker]) -> list[Action]:
    """Removals are stopped on the workers that can hear it (a lost one stops them when it
    returns); one on lost workers only was forgotten instead."""
    return [Action(ActionKind.STOP, instance=i.id, worker=w, reason="marked for removal")
            for i in instances if i.deleting for w in i.workers if w in workers and workers[w].ready]


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




def restart_delay_seconds(restart_count: int, timing: Timing = Timing()) -> float:
    """Wait before restart number ``restart_count + 1``: the first at once, then
    base × 2^(n−1), capped (0, 10, 20, 40, 80, 160, 300, 300 … s)."""
    if restart_count < 0:
        raise ValueError("restart_count must be >= 0")
    if restart_count == 0:
        return 0.0
    return min(timing.restart_cap_s, timing.restart_base_s * (2 ** min(restart_count - 1, 32)))


def crash_looping(restart_count: int, timing: Timing = Timing()) -> bool:
    """Restarted this often without a stable window in between: shown as crash-looping (it
    keeps retrying at the cap), so a flapping model is told apart from a healthy one."""
    return restart_count >= timing.crash_loop_after


def _restart(deployment: DesiredDeployment, instances: Sequence[ObservedInstance],
             workers: dict[str, ObservedWorker], now: datetime, timing: Timing) -> tuple[list[Action], list[Action]]:
    """ERROR instances on ready workers, restart on error on: their next restart time is
    stored once (failure time + back-off; a server restart keeps it), and they are restarted
    when it comes."""
    schedule: list[Action] = []
    restart: list[Action] = []
    if deployment.deleting:
        return schedule, restart
    for inst in instances:
        if inst.deleting or inst.state != S.ERROR or not inst.placed:
            continue
        if not deployment.restart_on_error and not inst.planned_stop:
            continue  # a planned stop is no error: it comes back whatever the setting
        if _lost(inst, workers):
            continue  # UNREACHABLE now; restarted when its workers are back
        attempt = inst.restart_count + (0 if inst.planned_stop else 1)
        due = inst.next_restart_at
        if due is None:
            delay = 0.0 if inst.planned_stop else restart_delay_seconds(inst.restart_count, timing)
            due = inst.updated_at + timedelta(seconds=delay)
            when = "at once" if delay == 0 else f"after a {delay:g} s back-off"
            if inst.planned_stop:
                when = "at once: its node stopped it on purpose, not a crash"
            looping = "; crash-looping" if crash_looping(inst.restart_count, timing) and not inst.planned_stop else ""
            schedule.append(Action(ActionKind.SCHEDULE_RESTART, instance=inst.id, worker=inst.worker, at=due,
                                   reason=f"restart {attempt} {when}{looping}"))
        if now >= due:
            failed = (now - inst.updated_at).total_seconds()
            restart.append(Action(ActionKind.RESTART, instance=inst.id, worker=inst.worker,
                                  reason=f"failed {failed:.0f} s ago; restart {attempt} due "
                                         f"{due.isoformat(timespec='seconds')}"))
    return schedule, restart
