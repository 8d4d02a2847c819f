"""What a user asks of placement (:class:`PlacementSpec`) and what it decided
(:class:`Placement`). Pure pydantic models shared by the API, the store and the
placement engine."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["spread", "binpack"]


class PlacementSpec(BaseModel):
    """How a deployment's instances may be placed.

    ``worker_selector`` holds label expressions, all of which must match
    (``key=value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``,
    ``key`` / ``key exists``, ``!key``). ``gpu_selector`` lists ``WORKER:INDEX``
    GPUs the instances may use; with ``gpus_per_replica`` they are partitioned
    across replicas, never shared unless ``overcommit`` is set.
    """

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = "spread"
    worker_selector: list[str] = Field(default_factory=list)
    gpu_selector: list[str] = Field(default_factory=list)
    gpus_per_replica: int | None = Field(default=None, ge=1, le=64)
    cpu_offloading: bool = False
    distributed: bool = False
    overcommit: bool = False


class Placement(BaseModel):
    """Where an instance runs and the memory it claims there."""

    worker: str
    gpu_indexes: list[int] = Field(default_factory=list)
    vram_claim: dict[int, int] = Field(default_factory=dict)  # gpu index -> bytes
    ram_claim: int = 0
