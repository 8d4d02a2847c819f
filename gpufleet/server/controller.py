"""The server's control loop: what no user operation triggers, decided by the same plan as
every operation (:mod:`gpufleet.core.plan`), read from the database every INTERVAL_S.

- MARK_UNREACHABLE, RESET_BACKOFF and SCHEDULE_RESTART are applied here at once: instances
  on a lost worker become UNREACHABLE (the node re-reports them when it is back), a stable
  run forgets its restart count, a failure gets its stored restart time.
- RESTART starts a `restart` flow run, once per failure, when its stored time comes (the
  first at once, then 10 s, 20 s, 40 s … capped at 5 minutes).
- A placement on a worker lost before the instance started is released and placed again,
  and one on a worker lost past the grace is rescheduled (a `reconcile` run at once), like
  PENDING instances that did not fit, which are planned for placement again only when the
  cluster changed (a worker registers, returns or leaves, claims are released): a
  `reconcile` run of their deployment within one round.
- Any other action left in a plan whose deployment and instances have been idle for
  REDRIVE_AFTER_S means an operation's flow run stopped half-way (e.g. Prefect refused a
  request): a `reconcile` (or, while deleting, `delete`) run, at most every REDRIVE_AFTER_S.

Runs never pile up: the controller remembers the flow runs it started, per deployment and
per instance, and starts no other for the same one while Prefect says that run is still
scheduled, pending or running (a Late run is a scheduled one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpufleet.core.plan import RETRY_UNPLACED, ActionKind, Plan, PlanOptions
from gpufleet.core.states import InstanceState
from gpufleet.store import repository as repo
from gpufleet.store.models import DeploymentRow, InstanceRow
from gpufleet.settings import plan_timing
from gpufleet.store.plan_apply import mark_unreachable, observe_workers, plan_for, reset_backoff, schedule_restart

log = logging.getLogger("gpufleet.controller")
INTERVAL_S = 2.0
#: The shortest pause between rounds (a restart due sooner waits this long at most).
MIN_PAUSE_S = 0.05
REDRIVE_AFTER_S = 30.0
#: Left to the controller itself (applied here, or a run of their own), never a re-drive.
APPLIED_HERE = frozenset({ActionKind.MARK_UNREACHABLE, ActionKind.RESET_BACKOFF, ActionKind.SCHEDULE_RESTART})
OWN_ACTIONS = APPLIED_HERE | {ActionKind.RESTART}
#: Prefect state types of a run that is over; any other (SCHEDULED incl. Late, PENDING,
#: RUNNING, PAUSED, CANCELLING) is still going.
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})

#: The Prefect state type of a flow run by id (None: Prefect does not know it).
RunState = Callable[[str], str | None]


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def prefect_run_state(run_id: str) -> str | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    return run.state.type.value if run.state is not None else None


class Controller:
    def __init__(self, state: Any, trigger: Callable[[str, dict[str, Any]], str],
                 run_state: RunState | None = None) -> None:
        """``run_state`` reads a run's Prefect state (``prefect_run_state`` with the real
        trigger); None: runs are not tracked (a trigger that starts no Prefect runs)."""
        self.state = state
        self.trigger = trigger
        self.run_state = run_state
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._next_due: datetime | None = None
        self._thread = threading.Thread(target=self._loop, name="gpufleet-controller", daemon=True)
        #: (instance, restart count, stored restart time): one restart run per failure
        self._restarts_started: set[tuple[int, int, datetime | None]] = set()
        self._last_redrive: dict[str, datetime] = {}
        self._cluster_seen: tuple[object, ...] | None = None
        #: the last run started per ("deployment", name) / ("instance", id)
        self._runs: dict[tuple[str, str], str] = {}
        #: Prefect events (gpufleet.server.events): instances marked here, workers lost and back
        self._changed: list[int] = []
        self._ready: dict[str, bool] = {}
        self._rounds_seen = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def wake(self) -> None:
        """Plan now rather than at the next tick (an instance just failed: its first restart
        is due at once)."""
        self._wake.set()

    def _pause(self) -> float:
        """Until the next tick, or sooner when a stored restart time comes before it."""
        if self._next_due is None:
            return INTERVAL_S
        until = (self._next_due - datetime.now(timezone.utc)).total_seconds()
        return min(INTERVAL_S, max(MIN_PAUSE_S, until))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._pause())
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the loop must survive a bad round
                log.exception("control loop round failed")

    def run_once(self, now: datetime | None = None) -> None:
        now = _aware(now or datetime.now(timezone.utc))
        options = PlanOptions(retry_unplaced=self.cluster_changed())
        with self.state.session() as s:
            # the workers once per round, not once per deployment; the timing likewise
            workers = observe_workers(s, datetime.now(timezone.utc), self.state.worker_timeout)
            self.note_workers(workers)
            timing = plan_timing()
            for dep in s.scalars(select(DeploymentRow).order_by(DeploymentRow.name)).all():
                plan = plan_for(s, dep, now, self.state.worker_timeout, options, timing, workers)
                if not plan.empty:
                    self.act(s, dep, plan, now)
            s.flush()
            pending = s.scalars(select(InstanceRow.next_restart_at).where(InstanceRow.state == InstanceState.ERROR)
                                .where(InstanceRow.next_restart_at.is_not(None))).all()
        changed, self._changed = self._changed, []
        if changed and getattr(self.state, "events", None) is not None:
            self.state.events.instances_changed(changed)  # after the commit: the events read the new states
        future = [_aware(t) for t in pending if _aware(t) > now]
        self._next_due = min(future) if future else None

    def act(self, session: Session, dep: DeploymentRow, plan: Plan, now: datetime) -> None:
        self.apply_here(session, plan)
        self.end_runs_on_lost_workers(plan)
        self.restart(session, plan)
        rest = [a for a in plan.actions if a.kind not in OWN_ACTIONS]
        if not rest:
            return
        replace_pending = any(a.kind in (ActionKind.RELEASE, ActionKind.RESCHEDULE)
                              or a.kind == ActionKind.PLACE and a.reason == RETRY_UNPLACED for a in rest)
        if replace_pending or self.stalled(session, dep, rest, now):
            operation = "delete" if dep.deleting else "reconcile"
            if self.start_run(("deployment", dep.name), operation, {"name": dep.name},
                              "; ".join(sorted({a.reason for a in rest}))):
                self._last_redrive[dep.name] = now

    def apply_here(self, session: Session, plan: Plan) -> None:
        for action in plan.of(*APPLIED_HERE):
            row = session.get(InstanceRow, action.instance)
            if row is None:
                continue
            log.info("instance %s: %s", row.name, action.reason)
            match action.kind:
                case ActionKind.MARK_UNREACHABLE:
                    mark_unreachable(row, action)
                    self._changed.append(row.id)
                case ActionKind.RESET_BACKOFF:
                    reset_backoff(row)
                case ActionKind.SCHEDULE_RESTART:
                    schedule_restart(row, action)

    def note_workers(self, workers: list[Any]) -> None:
        """A worker lost or back since the last round: a Prefect event (not on the first round)."""
        events = getattr(self.state, "events", None)
        stuck = getattr(self.state, "stuck_runs", None)  # gpufleet.server.stuck_runs, with a Prefect API
        if stuck is not None and not self._rounds_seen:
            stuck.server_started()  # the first round: runs the previous server process left Running
        self._rounds_seen = True
        for w in workers:
            before = self._ready.get(w.name)
            self._ready[w.name] = w.ready
            if events is not None and before is not None and before != w.ready:
                events.worker_changed(w.name, w.ready)
            if stuck is not None and before is not False and not w.ready:
                stuck.worker_lost(w.name)  # its node runs still Running end Crashed, now

    def end_runs_on_lost_workers(self, plan: Plan) -> None:
        """A placement released from a lost worker: the serve run dispatched to it after the
        worker was last seen (so after note_workers ended its runs) will never begin; end it, so
        the control run waiting on it goes on rather than wait out its timeout."""
        stuck = getattr(self.state, "stuck_runs", None)
        if stuck is None:
            return
        for worker in sorted({a.worker for a in plan.of(ActionKind.RELEASE) if a.worker}):
            stuck.worker_lost(worker)

    def restart(self, session: Session, plan: Plan) -> None:
        for action in plan.of(ActionKind.RESTART):
            row = session.get(InstanceRow, action.instance)
            key = (action.instance, row.restart_count if row is not None else 0,
                   _aware(row.next_restart_at) if row is not None and row.next_restart_at else None)
            if key in self._restarts_started:
                continue
            if self.start_run(("instance", str(action.instance)), "restart", {"instance_id": action.instance},
                              action.reason):
                self._restarts_started.add(key)

    def busy(self, key: tuple[str, str]) -> bool:
        """A run this controller started for ``key`` is still scheduled, pending or running."""
        run_id = self._runs.get(key)
        if run_id is None or self.run_state is None:
            return False
        try:
            state = self.run_state(run_id)
        except Exception as exc:  # noqa: BLE001 - Prefect unreachable: starting another would pile up
            log.warning("could not read flow run %s of %s %s: %s", run_id, *key, exc)
            return True
        if state is None or state in FINAL_STATES:
            del self._runs[key]
            return False
        return True

    def start_run(self, key: tuple[str, str], operation: str, parameters: dict[str, Any], why: str) -> bool:
        """Start ``operation`` for ``key`` unless a run of it is still going; True if started."""
        if self.busy(key):
            log.debug("%s %s: run %s still going; no new %s run", *key, self._runs[key], operation)
            return False
        log.info("%s %s: %s (%s)", *key, operation, why)
        run_id = self.trigger(operation, parameters)
        if run_id:
            self._runs[key] = run_id
        return True

    def stalled(self, session: Session, dep: DeploymentRow, actions: list, now: datetime) -> bool:
        """The deployment and every instance the actions name untouched for REDRIVE_AFTER_S,
        and no re-drive of it within REDRIVE_AFTER_S."""
        idle = timedelta(seconds=REDRIVE_AFTER_S)
        last = self._last_redrive.get(dep.name)
        if last is not None and now - last < idle:
            return False
        if now - _aware(dep.updated_at) < idle:
            return False
        for action in actions:
            row = session.get(InstanceRow, action.instance) if action.instance is not None else None
            if row is not None and now - _aware(row.updated_at) < idle:
                return False
        return True

    def cluster_fingerprint(self) -> tuple[object, ...]:
        """What placement depends on besides the instance itself: which workers are
        ready with what hardware, and the claims taken and released."""
        with self.state.session() as s:
            workers = repo.list_workers(s, self.state.worker_timeout)
            version = repo.claims_version(s)
        return (version, tuple((w.name, w.ready, len(w.gpus), w.memory_total, tuple(sorted(w.labels.items())))
                               for w in workers))

    def cluster_changed(self) -> bool:
        """Since the last round (the first round only records the cluster)."""
        seen = self.cluster_fingerprint()
        changed = self._cluster_seen is not None and seen != self._cluster_seen
        self._cluster_seen = seen
        return changed
