"""`gpufleet plan` (dry run of a whole deployment) and `gpufleet cluster snapshot`.

`plan` takes the deployment as `gpufleet deploy` does (or a JSON spec file) and
prints, for every replica in order, where it would run — worker, GPUs, claims,
layers on GPU, score — or why it does not fit, for every worker. Without
`--cluster` the server plans against the live claim ledger; with
`--cluster FILE` (a `gpufleet cluster snapshot`, possibly edited: "16 more
H100s") it is computed here, and nothing needs to be running. Nothing is
recorded either way. The exit status is 0 when every replica fits, 3 when some do not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from gpufleet.cli.output import console, err_console, print_json
from gpufleet.cli.placement_options import (
    CpuOffloadingOpt,
    DistributedOpt,
    GpuOpt,
    GpusPerReplicaOpt,
    OvercommitOpt,
    StrategyOpt,
    WorkerSelectorOpt,
    placement_fields,
)
from gpufleet.cli.source_options import (
    FileOpt,
    HfOpt,
    LocalPathOpt,
    ModelScopeOpt,
    RevisionOpt,
    SourceOptionError,
    source_from_options,
)
from gpufleet.client import ApiError, GpufleetClient, ServerUnavailable
from gpufleet.core.backends.llama_cpp import validate_params
from gpufleet.core.backends.params import BackendParamError
from gpufleet.core.placement import ClusterSnapshot, PlacementRequest, PlanResult, plan_deployment
from gpufleet.core.schemas import DeploymentSpec

GiB = float(1 << 30)
SOME_UNPLACED = 3


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())


def _load_cluster(path: Path) -> ClusterSnapshot:
    try:
        return ClusterSnapshot.model_validate_json(path.read_bytes())
    except OSError as exc:
        _fail(f"cannot read cluster snapshot {path}: {exc.strerror}")
    except ValidationError as exc:
        _fail(f"cluster snapshot {path} is invalid: {_errors(exc)} "
              "(write one with `gpufleet cluster snapshot > FILE`)")
    raise AssertionError("unreachable")


def _spec_from_file(path: Path) -> DeploymentSpec:
    try:
        return DeploymentSpec.model_validate(json.loads(path.read_text()))
    except OSError as exc:
        _fail(f"cannot read deployment spec {path}: {exc.strerror}")
    except (ValueError, ValidationError) as exc:
        detail = _errors(exc) if isinstance(exc, ValidationError) else str(exc)
        _fail(f"deployment spec {path} is invalid: {detail}")
    raise AssertionError("unreachable")


def plan_locally(spec: DeploymentSpec, cluster: ClusterSnapshot) -> PlanResult:
    """Read the model's metadata here (header only) and plan against the snapshot."""
    from gpufleet.sources import ModelSourceError, read_metadata

    try:
        metadata = read_metadata(spec.source)
    except ModelSourceError as exc:
        _fail(str(exc))
        raise
    request = PlacementRequest.from_config(spec.name, spec.config(), metadata)
    return plan_deployment(cluster, request, spec.replicas)


def plan_table(result: PlanResult) -> Table:
    t = Table("REPLICA", "WORKER", "GPUS", "STAGE", "VRAM", "RAM", "GPU LAYERS", "SCORE", "NOTE / WHY NOT", box=None)
    for r in result.replicas:
        p = r.placement
        if p is None:
            t.add_row(str(r.replica), "-", "-", "unplaced", "-", "-", "-", "-", r.reason or "")
            continue
        gpus = ",".join(map(str, p.gpu_indexes)) or "-"
        for part in p.parts:
            gpus += f" +{part.worker}:{','.join(map(str, part.gpu_indexes))}"
        vram = sum(p.vram_claim.values()) + sum(sum(x.vram_claim.values()) for x in p.parts)
        layers = f"{p.gpu_layers}/{p.total_layers}" if p.total_layers else "-"
        breakdown = " ".join(f"{k}={v:g}" for k, v in p.score_breakdown.items() if v)
        t.add_row(str(r.replica), p.worker, gpus, p.stage, f"{vram / GiB:.2f} GiB", f"{p.ram_claim / GiB:.2f} GiB",
                  layers, f"{p.score:g}" + (f" ({breakdown})" if breakdown else ""), p.note)
    return t


def register(app: typer.Typer) -> None:
    """Add `plan` and `cluster snapshot` to the gpufleet command."""
    cluster_app = typer.Typer(help="The cluster as placement sees it.", no_args_is_help=True)

    @cluster_app.command("snapshot")
    def snapshot() -> None:
        """Print the live cluster (workers, labels, GPUs, reserved memory, claims) as JSON."""
        try:
            with GpufleetClient() as c:
                snap = c.cluster_snapshot()
        except (ApiError, ServerUnavailable) as exc:
            _fail(str(exc), 1)
        print_json(snap)

    app.add_typer(cluster_app, name="cluster")

    @app.command("plan")
    def plan(
        spec_file: Annotated[Optional[Path], typer.Argument(help="deployment spec as JSON (or give the flags)")] = None,
        name: Annotated[str, typer.Option("--name", help="deployment name")] = "plan",
        local_path: LocalPathOpt = None,
        hf: HfOpt = None,
        modelscope: ModelScopeOpt = None,
        file: FileOpt = None,
        revision: RevisionOpt = None,
        replicas: Annotated[int, typer.Option(help="number of instances")] = 1,
        backend: Annotated[str, typer.Option(help="llama.cpp, llama-box, vllm or vox-box")] = "llama.cpp",
        backend_param: Annotated[Optional[list[str]], typer.Option("--backend-param")] = None,
        placement: StrategyOpt = "spread",
        worker_selector: WorkerSelectorOpt = None,
        gpu: GpuOpt = None,
        gpus_per_replica: GpusPerReplicaOpt = None,
        cpu_offloading: CpuOffloadingOpt = False,
        distributed: DistributedOpt = False,
        overcommit: OvercommitOpt = False,
        cluster: Annotated[Optional[Path], typer.Option("--cluster", help="snapshot file instead of the live cluster")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """Dry run: where every replica of a deployment would go, or why it would not fit."""
        if spec_file is not None:
            if local_path or hf or modelscope:
                _fail("give the deployment either as a spec file or with --local-path/--hf/--modelscope, not both")
            spec = _spec_from_file(spec_file)
        else:
            try:
                params = list(backend_param or [])
                validate_params(params)
                spec = DeploymentSpec(
                    name=name, replicas=replicas, backend=backend,  # type: ignore[arg-type]
                    source=source_from_options(local_path, hf, modelscope, file, revision),
                    backend_params=params,
                    placement=placement_fields(placement, worker_selector, gpu, gpus_per_replica,
                                               cpu_offloading, distributed, overcommit),
                )
            except (SourceOptionError, BackendParamError) as exc:
                _fail(str(exc))
            except ValidationError as exc:
                _fail(f"invalid deployment: {_errors(exc)}")
        if cluster is not None:
            result = plan_locally(spec, _load_cluster(cluster))
        else:
            try:
                with GpufleetClient() as c:
                    result = c.plan(spec)
            except ApiError as exc:
                _fail(exc.detail, 2 if exc.status in (400, 422) else 1)
            except ServerUnavailable as exc:
                _fail(f"{exc} (or plan against a file with --cluster SNAPSHOT.json)", 1)
        if as_json:
            print_json(result)
        else:
            console.print(plan_table(result))
            console.print(f"{result.placed} of {len(result.replicas)} replica(s) fit", highlight=False)
        if result.placed < len(result.replicas):
            raise typer.Exit(SOME_UNPLACED)
