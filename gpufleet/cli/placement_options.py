"""The placement options shared by `deploy` and `plan`, so both take the same flags
with the same help and build the same `placement` part of a spec."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

StrategyOpt = Annotated[str, typer.Option("--placement", help="spread or binpack")]
WorkerSelectorOpt = Annotated[
    Optional[list[str]],
    typer.Option("--worker-selector", help="label expression: key=value, key!=value, 'key in (a,b)', "
                 "'key notin (a)', key, !key (repeatable; all must match)"),
]
GpuOpt = Annotated[Optional[list[str]], typer.Option("--gpu", help="WORKER:INDEX the instances may use (repeatable)")]
GpusPerReplicaOpt = Annotated[
    Optional[int], typer.Option("--gpus-per-replica", help="GPUs per instance (with --gpu: the selection is partitioned)")
]
CpuOffloadingOpt = Annotated[
    bool, typer.Option("--cpu-offloading", help="llama.cpp: layers that do not fit on GPUs run on the CPU")
]
DistributedOpt = Annotated[bool, typer.Option("--distributed", help="allow one instance across several workers")]
OvercommitOpt = Annotated[bool, typer.Option("--overcommit", help="let replicas share selected GPUs")]


def placement_fields(
    strategy: str,
    worker_selector: list[str] | None,
    gpu: list[str] | None,
    gpus_per_replica: int | None,
    cpu_offloading: bool,
    distributed: bool,
    overcommit: bool,
) -> dict[str, Any]:
    """The spec's `placement`, left as a dict so that it is validated with the spec and
    its errors name `placement.<field>`."""
    return {
        "strategy": strategy,
        "worker_selector": worker_selector or [],
        "gpu_selector": gpu or [],
        "gpus_per_replica": gpus_per_replica,
        "cpu_offloading": cpu_offloading,
        "distributed": distributed,
        "overcommit": overcommit,
    }
