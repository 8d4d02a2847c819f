"""``gpufleet estimate``: memory of one instance, per device, without deploying it.

Reads the model's headers only (local file, or a hub through
:func:`gpufleet.sources.read_metadata`) and runs the same pure estimate as the
deploy flow and the placement engine, for the configuration given on the
command line:

    gpufleet estimate --local-path m.gguf --backend-param=--ctx-size=8192 --gpus 2 --fits A100-80G:2

``main.py`` adds it with ``estimate_cmd.register(app)``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from gpufleet.cli.output import console, err_console
from gpufleet.cli.source_options import (
    FileOpt,
    HfOpt,
    LocalPathOpt,
    ModelScopeOpt,
    RevisionOpt,
    SourceOptionError,
    source_from_options,
)
from gpufleet.core.estimation import BACKENDS, EstimateOptions, estimate
from gpufleet.core.estimation.fits import FitResult, check_fit
from gpufleet.core.estimation.gpu_types import GpuType, GpuTypeError, parse_gpu_type
from gpufleet.core.estimation.summary import check_params, from_estimate
from gpufleet.core.estimation.types import Estimate
from gpufleet.core.metadata import ModelMetadata

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_GPU = "A100-80G"  # card size assumed with --gpus and no --fits (only vLLM's claim depends on it)
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def _split(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise _fail(f"--tensor-split takes proportions like 3,1, got {text!r}") from None
    if not parts or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise _fail(f"--tensor-split takes non-negative proportions with a positive sum, got {text!r}")
    return parts


def _devices(gpus: int | None, split: tuple[float, ...] | None, fits: GpuType | None) -> tuple[int, ...]:
    counts = {n for n in (gpus, len(split) if split else None, fits.count if fits else None) if n is not None}
    if len(counts) > 1:
        raise _fail("--gpus, --tensor-split and --fits name different GPU counts; make them agree")
    count = counts.pop() if counts else 0
    card = fits or parse_gpu_type(DEFAULT_GPU)
    return (card.memory,) * count


def _table(est: Estimate) -> Table:
    t = Table("DEVICE", "LAYERS", "WEIGHTS", "KV CACHE", "COMPUTE", "OUTPUT", "OVERHEAD", "TOTAL", box=None)
    rows = from_estimate(est)
    for d in rows:
        t.add_row("cpu (RAM)" if d.device == "cpu" else f"{d.device} (VRAM)", str(d.layers), _size(d.weights),
                  _size(d.kv_cache), _size(d.compute), _size(d.output), _size(d.overhead), _size(d.total))
    total = [sum(getattr(d, f) for d in rows) for f in ("weights", "kv_cache", "compute", "output", "overhead", "total")]
    t.add_row("total", "", *(_size(v) for v in total))
    return t


def _fit_line(fit: FitResult, card: GpuType) -> str:
    claims = ", ".join(f"{c / GiB:.2f}" for c in fit.estimate.claims)
    where = f"{card.count} x {card.name} ({card.memory / GiB:.4g} GiB each)"
    if fit.fits:
        return f"fits {where}: yes (claims {claims} GiB)"
    more = f"; at most --gpu-layers {fit.best_gpu_layers} fit" if fit.best_gpu_layers else ""
    return f"fits {where}: no (claims {claims} GiB){more}"


def _json(meta: ModelMetadata, est: Estimate, fit: FitResult | None, card: GpuType | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": {"architecture": meta.architecture, "format": meta.format, "quantization": meta.quantization,
                  "tensor_bytes": meta.tensor_bytes},
        "backend": est.backend, "known": est.known, "reason": est.reason, "context_size": est.context_size,
        "total_layers": est.total_layers, "gpu_layers": est.gpu_layers, "ram": est.ram, "vram": list(est.vram),
        "claims": list(est.claims), "devices": [d.model_dump() for d in from_estimate(est)],
        "kv_cache_available": list(est.kv_cache_available), "notes": list(est.notes),
    }
    if fit is not None and card is not None:
        out["fits"] = {"gpu_type": card.name, "count": card.count, "memory": card.memory, "fits": fit.fits,
                       "best_gpu_layers": fit.best_gpu_layers}
    return out


def estimate_command(
    local_path: LocalPathOpt = None,
    hf: HfOpt = None,
    modelscope: ModelScopeOpt = None,
    file: FileOpt = None,
    revision: RevisionOpt = None,
    backend: Annotated[str, typer.Option("--backend", help=f"one of {', '.join(BACKENDS)}")] = "llama.cpp",
    backend_param: Annotated[Optional[list[str]], typer.Option(
        "--backend-param", help="backend flag, e.g. --backend-param=--ctx-size=1024 (repeatable)")] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", min=0, help="number of GPUs (0: CPU only)")] = None,
    tensor_split: Annotated[Optional[str], typer.Option("--tensor-split", help="proportions per GPU, e.g. 3,1")] = None,
    gpu_layers: Annotated[Optional[int], typer.Option(
        "--gpu-layers", min=0, help="llama.cpp layers on GPUs (the output layer counts as one)")] = None,
    fits: Annotated[Optional[str], typer.Option(
        "--fits", help="check against GPUs of a type, NAME:COUNT, e.g. A100-80G:2")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Estimate RAM and VRAM per device for one instance of a model."""
    from gpufleet.sources import ModelSourceError, read_metadata

    if backend not in BACKENDS:
        raise _fail(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    params = tuple(backend_param or ())
    try:
        source = source_from_options(local_path, hf, modelscope, file, revision)
        card = parse_gpu_type(fits) if fits else None
        check_params(backend, list(params))
    except (SourceOptionError, GpuTypeError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    split = _split(tensor_split)
    memory = _devices(gpus, split, card)
    try:
        meta = read_metadata(source)
    except ModelSourceError as exc:
        raise _fail(str(exc), 1) from exc
    options = EstimateOptions(backend=backend, backend_params=params, gpu_memory=memory, tensor_split=split,
                              gpu_layers=gpu_layers)
    fit = check_fit(meta, options, memory) if card is not None else None
    est = fit.estimate if fit is not None else estimate(meta, options)
    if as_json:
        print(json.dumps(_json(meta, est, fit, card), indent=2))
    if not est.known:
        raise _fail(f"estimate unknown: {est.reason}", 1)
    if as_json:
        return
    _print(meta, est, fit, card, memory)


def _print(meta: ModelMetadata, est: Estimate, fit: FitResult | None, card: GpuType | None,
           memory: tuple[int, ...]) -> None:
    quant = f" {meta.quantization}" if meta.quantization else ""
    console.print(f"{meta.architecture}{quant}, {_size(meta.tensor_bytes)} of weights; backend {est.backend}, "
                  f"context {est.context_size}", highlight=False)
    if est.gpus:
        console.print(f"layers on GPUs: {est.gpu_layers}/{est.total_layers} (the output layer counts as one)",
                      highlight=False)
    console.print(_table(est))
    console.print(f"RAM {_size(est.ram)}" + (f"; VRAM per GPU {', '.join(_size(v) for v in est.vram)}"
                                              if est.gpus else ""), highlight=False)
    if est.gpus and est.claims != est.vram:
        console.print(f"claimed per GPU: {', '.join(_size(c) for c in est.claims)}", highlight=False)
    if card is None and memory:
        console.print(f"assumed {DEFAULT_GPU} cards; use --fits NAME:COUNT for another type", highlight=False)
    for note in est.notes:
        console.print(f"note: {note}", highlight=False)
    if fit is not None and card is not None:
        console.print(_fit_line(fit, card), highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``gpufleet estimate`` to the CLI."""
    app.command("estimate")(estimate_command)
