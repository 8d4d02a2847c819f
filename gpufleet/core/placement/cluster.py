"""The cluster as placement sees it: workers, their GPUs and the claims of placed
instances. This is also the file format of `gpufleet cluster snapshot` and
`gpufleet plan --cluster`, so it is a pydantic model (validated at the boundary)
and carries no derived numbers: free memory is computed from it by the ledger.

free VRAM of a GPU  = memory_total − reserved − used_outside − Σ vram claims on it
free RAM of a worker = memory_total − ram_reserved − Σ ram claims
                       (− Σ vram claims on its GPUs when they share RAM: Apple unified memory)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gpufleet.core.placement_spec import PlacementPart


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GpuSnapshot(_Model):
    index: int = Field(ge=0)
    name: str = ""
    memory_total: int = Field(ge=0, description="bytes")
    reserved: int = Field(default=0, ge=0, description="bytes kept free for the system and other programs")
    used_outside: int = Field(default=0, ge=0, description="bytes used by processes gpufleet did not start, "
                              "as the node last saw them (NVML); never claimable")
    vendor: str = "nvidia"
    unified_memory: bool = Field(default=False, description="shares the worker's RAM (Apple silicon)")


class WorkerSnapshot(_Model):
    name: str
    ready: bool = True
    labels: dict[str, str] = Field(default_factory=dict)
    memory_total: int = Field(ge=0, description="bytes of RAM")
    ram_reserved: int = Field(default=0, ge=0)
    cpu_count: int = Field(default=1, ge=1)
    gpus: list[GpuSnapshot] = Field(default_factory=list)
    rpc: bool = Field(default=True, description="can run llama.cpp RPC (--distributed); gpufleet nodes "
                      "report it, a snapshot file that leaves it out describes workers that can")


class ClaimSnapshot(_Model):
    """Memory held by one placed instance (its placement's claims)."""

    deployment: str = ""
    instance: int | None = None
    source: str = Field(default="", description="model identity, for file locality")
    worker: str
    gpu_indexes: list[int] = Field(default_factory=list)
    vram_claim: dict[int, int] = Field(default_factory=dict)
    ram_claim: int = 0
    exclusive: bool = False
    parts: list[PlacementPart] = Field(default_factory=list)


class ClusterSnapshot(_Model):
    workers: list[WorkerSnapshot] = Field(default_factory=list)
    claims: list[ClaimSnapshot] = Field(default_factory=list)
