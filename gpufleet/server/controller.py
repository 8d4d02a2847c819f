"""The server's control loop: what no user operation triggers.

- Instances on a worker whose heartbeats stopped become UNREACHABLE (the node
  re-reports them when it is back).
- Failed instances are restarted after an exponential backoff: 10 s × 2^restarts,
  capped at 5 minutes (`gpufleet.core.reconcile.restart_delay_seconds`), each
  restart a `restart` flow run.
- PENDING instances that did not fit are placed again as soon as the cluster
  changes — a worker registers, comes back or leaves, or claims are released —
  by a `reconcile` flow run of their deployment, found within one INTERVAL_S
  round (not on the 30 s re-drive timer).
- A deployment that stays unconverged (an operation's flow run failed half-way,
  e.g. because Prefect refused a request) is converged again by a `reconcile`
  (or, while deleting, `delete`) flow run, at most every REDRIVE_AFTER seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select

from gpufleet.core.reconcile import restart_delay_seconds
from gpufleet.core.states import InstanceState
from gpufleet.store import repository as repo
from gpufleet.store.ledger import UNPLACED_PREFIX
from gpufleet.store.models import DeploymentRow, InstanceRow

log = logging.getLogger("gpufleet.controller")
INTERVAL_S = 2.0
REDRIVE_AFTER_S = 30.0
IN_PROGRESS = (InstanceState.PENDING, InstanceState.ANALYZING, InstanceState.SCHEDULED)
WATCHED = (InstanceState.DOWNLOADING, InstanceState.STARTING, InstanceState.RUNNING)


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
        self.mark_unreachable()
        for name in self.replace_pending():
            log.info("cluster changed; placing the pending instances of %s again", name)
            self.trigger("reconcile", {"name": name})
            self._last_redrive[name] = now
        for instance_id, attempt in self.due_restarts(now):
            key = (instance_id, attempt)
            if key in self._restarts_started:
                continue
            log.info("restarting instance %d (restart %d)", instance_id, attempt + 1)
            self.trigger("restart", {"instance_id": instance_id})
            self._restarts_started.add(key)
        for name, deleting in self.unconverged(now):
            last = self._last_redrive.get(name)
            if last is not None and (now - last).total_seconds() < REDRIVE_AFTER_S:
                continue
            log.info("deployment %s is not converging; running %s again", name, "delete" if deleting else "reconcile")
            self.trigger("delete" if deleting else "reconcile", {"name": name})
            self._last_redrive[name] = now

    def cluster_fingerprint(self) -> tuple[object, ...]:
        """What placement depends on besides the instance itself: which workers are
        ready with what hardware, and the claims taken and released."""
        with self.state.session() as s:
            workers = repo.list_workers(s, self.state.worker_timeout)
            version = repo.claims_version(s)
        return (version, tuple((w.name, w.ready, len(w.gpus), w.memory_total, tuple(sorted(w.labels.items())))
                               for w in workers))

    def replace_pending(self) -> list[str]:
        """Deployments with instances that did not fit, when the cluster changed since the last round."""
        seen = self.cluster_fingerprint()
        changed = self._cluster_seen is not None and seen != self._cluster_seen
        self._cluster_seen = seen
        if not changed:
            return []
        with self.state.session() as s:
            names = s.scalars(
                select(DeploymentRow.name)
                .join(InstanceRow, InstanceRow.deployment_id == DeploymentRow.id)
                .where(
                    InstanceRow.state == str(InstanceState.PENDING),
                    InstanceRow.placement.is_(None),
                    InstanceRow.deleting.is_(False),
                    InstanceRow.state_message.startswith(UNPLACED_PREFIX),
                    DeploymentRow.deleting.is_(False),
                )
                .distinct()
            ).all()
        return sorted(names)

    def unconverged(self, now: datetime) -> list[tuple[str, bool]]:
        """Deployments untouched for REDRIVE_AFTER_S whose instances still do not match."""
        now = _aware(now)
        stale = timedelta(seconds=REDRIVE_AFTER_S)
        result = []
        with self.state.session() as s:
            for dep in s.scalars(select(DeploymentRow)):
                if now - _aware(dep.updated_at) < stale:
                    continue
                rows = s.scalars(select(InstanceRow).where(InstanceRow.deployment_id == dep.id)).all()
                live = [r for r in rows if not r.deleting]
                stuck = any(
                    now - _aware(r.updated_at) >= stale
                    for r in rows
                    if r.deleting or r.state in [str(x) for x in IN_PROGRESS]
                )
                if len(live) != dep.replicas or stuck or (dep.deleting and not rows):
                    result.append((dep.name, dep.deleting))
        return result

    def mark_unreachable(self) -> None:
        with self.state.session() as s:
            ready = {w.name: w for w in repo.list_workers(s, self.state.worker_timeout)}
            rows = s.scalars(
                select(InstanceRow).where(
                    InstanceRow.state.in_([str(x) for x in WATCHED]), InstanceRow.deleting.is_(False)
                )
            ).all()
            for row in rows:
                # the main worker, then the RPC part workers of a distributed instance
                parts = (row.placement or {}).get("parts", ())
                for role, name in [("worker", row.worker_name or ""), *(("part worker", p["worker"]) for p in parts)]:
                    worker = ready.get(name)
                    if worker is not None and not worker.ready:
                        seen = worker.last_heartbeat.isoformat(timespec="seconds") if worker.last_heartbeat else "never"
                        row.state = InstanceState.UNREACHABLE
                        row.state_message = f"{role} {name} stopped sending heartbeats (last {seen})"
                        break

    def due_restarts(self, now: datetime) -> list[tuple[int, int]]:
        now = _aware(now)
        with self.state.session() as s:
            rows = s.execute(
                select(InstanceRow.id, InstanceRow.restart_count, InstanceRow.updated_at)
                .join(DeploymentRow, InstanceRow.deployment_id == DeploymentRow.id)
                .where(
                    InstanceRow.state == str(InstanceState.ERROR),
                    InstanceRow.deleting.is_(False),
                    InstanceRow.worker_name.is_not(None),
                    DeploymentRow.deleting.is_(False),
                )
            ).all()
        return [
            (iid, restarts)
            for iid, restarts, updated in rows
            if now - _aware(updated) >= timedelta(seconds=restart_delay_seconds(restarts))
        ]
