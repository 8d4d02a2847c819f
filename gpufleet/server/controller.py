"""The server's control loop: what no user operation triggers, decided by the same plan as
every operation (:mod:`gpufleet.core.plan`), read from the database every INTERVAL_S.

- MARK_UNREACHABLE is applied at once: instances on a worker whose heartbeats stopped
  become UNREACHABLE (the node re-reports them when it is back).
- RESTART starts a `restart` flow run, once per failure, after the plan's back-off
  (10 s × 2^restarts, capped at 5 minutes).
- A placement on a worker lost before the instance started is released and placed again
  (a `reconcile` run at once), like PENDING instances that did not fit, which are planned for
  placement again only when the cluster changed (a worker registers, returns or leaves, claims are released): a `reconcile` run
  of their deployment within one round.
- Any other action left in a plan whose deployment and instances have been idle for
  REDRIVE_AFTER_S means an operation's flow run stopped half-way (e.g. Prefect refused a
  request): a `reconcile` (or, while deleting, `delete`) run, at most every REDRIVE_AFTER_S.
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
from gpufleet.store import repository as repo
from gpufleet.store.models import DeploymentRow, InstanceRow
from gpufleet.store.plan_apply import mark_unreachable, plan_for

log = logging.getLogger("gpufleet.controller")
INTERVAL_S = 2.0
REDRIVE_AFTER_S = 30.0
#: Left to the controller itself (applied here, or a run of their own), never a re-drive.
OWN_ACTIONS = frozenset({ActionKind.MARK_UNREACHABLE, ActionKind.RESTART})


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


class Controller:
    def __init__(self, state: Any, trigger: Callable[[str, dict[str, Any]], str]) -> None:
        self.state = state
        self.trigger = trigger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpufleet-controller", daemon=True)
        self._restarts_started: set[tuple[int, int]] = set()
        self._last_redrive: dict[str, datetime] = {}
        self._cluster_seen: tuple[object, ...] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the loop must survive a bad round
                log.exception("control loop round failed")

    def run_once(self, now: datetime | None = None) -> None:
        now = _aware(now or datetime.now(timezone.utc))
        options = PlanOptions(retry_unplaced=self.cluster_changed())
        with self.state.session() as s:
            for dep in s.scalars(select(DeploymentRow).order_by(DeploymentRow.name)).all():
                plan = plan_for(s, dep, now, self.state.worker_timeout, options)
                if not plan.empty:
                    self.act(s, dep, plan, now)

    def act(self, session: Session, dep: DeploymentRow, plan: Plan, now: datetime) -> None:
        for action in plan.of(ActionKind.MARK_UNREACHABLE):
            row = session.get(InstanceRow, action.instance)
            if row is not None:
                log.info("instance %s: %s", row.name, action.reason)
                mark_unreachable(row, action)
        self.restart(session, plan)
        rest = [a for a in plan.actions if a.kind not in OWN_ACTIONS]
        if not rest:
            return
        replace_pending = any(a.kind == ActionKind.RELEASE or a.kind == ActionKind.PLACE and a.reason == RETRY_UNPLACED
                              for a in rest)
        if replace_pending or self.stalled(session, dep, rest, now):
            operation = "delete" if dep.deleting else "reconcile"
            log.info("deployment %s: %s (%s)", dep.name, operation, "; ".join(sorted({a.reason for a in rest})))
            self.trigger(operation, {"name": dep.name})
            self._last_redrive[dep.name] = now

    def restart(self, session: Session, plan: Plan) -> None:
        for action in plan.of(ActionKind.RESTART):
            row = session.get(InstanceRow, action.instance)
            key = (action.instance, row.restart_count if row is not None else 0)
            if key in self._restarts_started:
                continue
            log.info("instance %d: %s", action.instance, action.reason)
            self.trigger("restart", {"instance_id": action.instance})
            self._restarts_started.add(key)

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
