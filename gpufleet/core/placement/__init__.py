"""Placement: where each replica of a deployment runs, and what memory it claims.

Pure (no I/O): the server runs it against the claim ledger under its placement
lock and commits the result in the same transaction; `gpufleet plan` runs it
against a snapshot file. The pipeline and its order are documented in
:mod:`gpufleet.core.placement.engine`; user-facing semantics in docs/placement.md.
"""

from __future__ import annotations

from gpufleet.core.placement.cluster import ClaimSnapshot, ClusterSnapshot, GpuSnapshot, WorkerSnapshot
from gpufleet.core.placement.engine import Placer, claim_of, place, plan
from gpufleet.core.placement.ledger import Ledger
from gpufleet.core.placement.live import LiveLedger
from gpufleet.core.placement.plan_result import PlanResult, ReplicaOutcome, plan_deployment
from gpufleet.core.placement.reasons import Unplaceable
from gpufleet.core.placement.request import PlacementRequest

__all__ = [
    "ClaimSnapshot", "ClusterSnapshot", "GpuSnapshot", "Ledger", "LiveLedger", "PlacementRequest", "Placer", "PlanResult",
    "ReplicaOutcome", "Unplaceable", "WorkerSnapshot", "claim_of", "place", "plan", "plan_deployment",
]
