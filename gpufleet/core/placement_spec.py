"""What a user asks of placement (:class:`PlacementSpec`) and what it decided
(:class:`Placement`). Pure pydantic models shared by the API, the store and the
placement engine (:mod:`gpufleet.core.placement`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpufleet.core.selectors import parse_expression, parse_gpus

Strategy = Literal["spread", "binpack"]
Stage = Literal["single-gpu", "multi-gpu", "distributed", "offload", "cpu", "unknown"]


class PlacementSpec(BaseModel):
    """How a deployment's instances may be placed.

    ``worker_selector`` holds label expressions, all of which must match
    (``key=value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``,
    ``key`` / ``key exists``, ``!key``). ``gpu_selector`` lists ``WORKER:INDEX``
    GPUs the instances may use; with ``gpus_per_replica`` they are partitioned
    across replicas, never shared unless ``overcommit`` is set. Syntax errors
    are refused here, so the API answers 400 and the CLI exits 2 before
    anything is recorded.
    """

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = "spread"
    worker_selector: list[str] = Field(default_factory=list)
    gpu_selector: list[str] = Field(default_factory=list)
    gpus_per_replica: int | None = Field(default=None, ge=1, le=64)
    cpu_offloading: bool = False
    distributed: bool = False
    overcommit: bool = False

    @field_validator("worker_selector")
    @classmethod
    def _valid_selectors(cls, v: list[str]) -> list[str]:
        for expression in v:
            parse_expression(expression)  # raises SelectorError (a ValueError) with the syntax
        return [e.strip() for e in v]

    @field_validator("gpu_selector")
    @classmethod
    def _valid_gpus(cls, v: list[str]) -> list[str]:
        return [ref.text() for ref in parse_gpus(v)]

    @model_validator(mode="after")
    def _consistent(self) -> PlacementSpec:
        n = len(self.gpu_selector)
        if self.gpus_per_replica and n and self.gpus_per_replica > n:
            raise ValueError(
                f"gpus_per_replica is {self.gpus_per_replica} but only {n} GPU(s) are selected with --gpu; "
                "select more GPUs or lower --gpus-per-replica"
            )
        if self.overcommit and not n:
            raise ValueError("--overcommit applies to a manual GPU selection; add --gpu WORKER:INDEX")
        return self


class PlacementPart(BaseModel):
    """The share of a distributed instance on one more worker: one llama.cpp
    ``rpc-server`` per GPU there, which the main ``llama-server`` drives over TCP."""

    worker: str
    gpu_indexes: list[int] = Field(default_factory=list)
    vram_claim: dict[int, int] = Field(default_factory=dict)  # gpu index -> bytes
    ram_claim: int = 0


class Placement(BaseModel):
    """Where an instance runs and the memory it claims there.

    The claims are the ledger: free memory = total − reserved − Σ claims.
    ``tensor_split`` (llama.cpp ``--tensor-split``) lists the proportions of the
    layers per device in llama.cpp's device order (:meth:`devices`); it is what
    the estimate assumed, so the backend must be started with it.
    """

    worker: str
    gpu_indexes: list[int] = Field(default_factory=list)
    vram_claim: dict[int, int] = Field(default_factory=dict)  # gpu index -> bytes
    ram_claim: int = 0
    stage: Stage = "single-gpu"
    gpu_layers: int | None = Field(default=None, description="layers on GPUs (None: all, or unknown)")
    total_layers: int | None = None
    offloaded: bool = Field(default=False, description="some layers run on the CPU")
    tensor_split: list[float] = Field(default_factory=list)
    exclusive: bool = Field(default=False, description="the GPUs are not shared (vLLM pre-allocates them)")
    parts: list[PlacementPart] = Field(default_factory=list, description="other workers of a distributed instance")
    score: float = 0.0
    score_breakdown: dict[str, float] = Field(default_factory=dict)
    estimate_known: bool = True
    note: str = ""

    @property
    def distributed(self) -> bool:
        return bool(self.parts)

    def workers(self) -> list[str]:
        """Every worker the instance runs on, the main one first."""
        return [self.worker, *(p.worker for p in self.parts)]

    def devices(self) -> list[tuple[str, int]]:
        """(worker, GPU index) in llama.cpp's device order, the order of ``tensor_split``.

        llama.cpp puts RPC devices before its local GPUs "to minimize network
        transfers" (``llama_model_load_from_file``, src/llama.cpp), and gives the
        output layer to the last device; so the parts' GPUs come first, in
        ``parts`` order, and the main worker's GPUs last."""
        remote = [(p.worker, i) for p in self.parts for i in p.gpu_indexes]
        return remote + [(self.worker, i) for i in self.gpu_indexes]

    def describe(self) -> str:
        """One line for state messages and `gpufleet plan`: where, what it claims."""
        gib = float(1 << 30)
        where = f"GPU {self.gpu_indexes}" if self.gpu_indexes else "CPU"
        vram = sum(self.vram_claim.values()) + sum(sum(p.vram_claim.values()) for p in self.parts)
        text = f"{self.worker} ({where}"
        for part in self.parts:
            text += f" + {part.worker} GPU {part.gpu_indexes}"
        text += f"), VRAM {vram / gib:.2f} GiB, RAM {self.ram_claim / gib:.2f} GiB"
        if self.offloaded and self.gpu_layers is not None:
            text += f", {self.gpu_layers}/{self.total_layers} layers on GPU"
        if self.note:
            text += f"; {self.note}"
        return text
