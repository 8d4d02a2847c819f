"""The dry run of a whole deployment (`gpufleet plan`, `POST /v1/plan`): every
replica in order, each placed against the claims of the ones before it."""

from __future__ import annotations

from pydantic import BaseModel, Field

from gpufleet.core.placement.cluster import ClusterSnapshot
from gpufleet.core.placement.engine import plan
from gpufleet.core.placement.reasons import Unplaceable
from gpufleet.core.placement.request import PlacementRequest
from gpufleet.core.placement_spec import Placement


class ReplicaOutcome(BaseModel):
    replica: int = Field(description="1-based position in the deployment")
    placement: Placement | None = None
    reason: str | None = Field(default=None, description="why it does not fit, for every worker")
    reasons: dict[str, str] = Field(default_factory=dict, description="worker -> reason")


class PlanResult(BaseModel):
    deployment: str
    replicas: list[ReplicaOutcome]

    @property
    def placed(self) -> int:
        return sum(1 for r in self.replicas if r.placement is not None)


def plan_deployment(cluster: ClusterSnapshot, request: PlacementRequest, replicas: int) -> PlanResult:
    outcomes = []
    for i, result in enumerate(plan(cluster, request, replicas), start=1):
        if isinstance(result, Unplaceable):
            outcomes.append(ReplicaOutcome(replica=i, reason=result.message(), reasons=result.reasons))
        else:
            outcomes.append(ReplicaOutcome(replica=i, placement=result))
    return PlanResult(deployment=request.deployment, replicas=outcomes)

