"""The options that name a model, shared by deploy, inspect, estimate and plan:
exactly one of --local-path, --hf, --modelscope, with --file/--revision for hubs."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from gpufleet.core.schemas import ModelSource

LocalPathOpt = Annotated[Optional[str], typer.Option("--local-path", help="GGUF file or model directory")]
HfOpt = Annotated[Optional[str], typer.Option("--hf", help="Hugging Face repository, e.g. org/name")]
ModelScopeOpt = Annotated[Optional[str], typer.Option("--modelscope", help="ModelScope repository")]
FileOpt = Annotated[
    Optional[str], typer.Option("--file", help="file or glob in the repository, e.g. '*Q4_K_M*.gguf'")
]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="hub branch, tag or commit")]


class SourceOptionError(ValueError):
    """The options do not name exactly one model; the message says how to fix it."""


def source_from_options(
    local_path: str | None,
    hf: str | None,
    modelscope: str | None,
    file: str | None = None,
    revision: str | None = None,
) -> ModelSource:
    given = [f for f, v in (("--local-path", local_path), ("--hf", hf), ("--modelscope", modelscope)) if v]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise SourceOptionError(
            f"give the model with exactly one of --local-path PATH, --hf REPO or --modelscope REPO{got}"
        )
    if local_path:
        if file or revision:
            raise SourceOptionError(
                "--file and --revision apply to --hf and --modelscope; point --local-path at the file"
            )
        return ModelSource(kind="local_path", local_path=os.path.abspath(os.path.expanduser(local_path)))
    kind = "huggingface" if hf else "modelscope"
    return ModelSource(kind=kind, repo=hf or modelscope, file=file, revision=revision)
