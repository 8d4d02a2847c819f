"""Looking at models before deploying them, through the server: hub search, a
repository's files grouped by quantization, and a model's metadata.

The CLI's `gpufleet search`, `files` and `inspect` run these on the user's own
machine; a web page cannot (it may only talk to the gpufleet server that serves
it, and the hub tokens live with the server). So the server offers the same
answers as public routes, computed by the same code (:mod:`gpufleet.sources`,
:mod:`gpufleet.core.model_files`), reading headers only:

- ``GET /v1/hubs/{hub}/models?search=&gguf=&limit=``: repositories matching words.
- ``GET /v1/hubs/{hub}/files?repo=&revision=``: GGUF files grouped by quantization
  (shards joined) with sizes, the quantization a deploy without a file would take,
  projectors, safetensors and the rest.
- ``POST /v1/models/inspect``: the metadata, category and backend gpufleet would use.

Errors are the sources' own messages: 404 for an unknown repository or a local path
the server cannot see, 403 for gated ones, 502 when the hub does not answer, 400 for
the rest.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from gpufleet.core.backends.choose import NoBackend, choose_backend
from gpufleet.core.metadata import Category, ModelMetadata
from gpufleet.core.model_files import FileChoiceError, GGUFGroup, RepoFiles, choose_gguf, group_files
from gpufleet.core.schemas import BackendName, ModelSource, Strict
from gpufleet.sources import (
    FileNotInRepo,
    GatedRepo,
    HubUnavailable,
    ModelNotVisible,
    ModelSourceError,
    RepoNotFound,
    resolve,
)
from gpufleet.sources.hub import SearchHit
from gpufleet.sources.resolve import hub_for

HubKind = Literal["huggingface", "modelscope"]


class FileView(BaseModel):
    path: str
    size: int = Field(description="bytes")


class FileGroupView(BaseModel):
    """One model in one quantization: a single GGUF file or all shards of a split one."""

    quantization: str
    size: int = Field(description="bytes, all shards together")
    files: list[FileView]
    shards_expected: int = 1
    complete: bool = True
    default: bool = Field(default=False, description="what a deploy without a file would take")


class RepoFilesView(BaseModel):
    """A repository's files as a deploy sees them."""

    repo: str
    gguf: list[FileGroupView] = Field(default_factory=list, description="smallest first")
    mmproj: list[FileGroupView] = Field(default_factory=list)
    safetensors: list[FileView] = Field(default_factory=list)
    other: list[FileView] = Field(default_factory=list)
    default_file: str | None = Field(default=None, description="first file of the default quantization")
    note: str = Field(default="", description="why the default is what it is, or why there is none")


class InspectRequest(Strict):
    source: ModelSource
    category: Category | None = None
    backend: BackendName | None = None


class InspectResult(BaseModel):
    source: str
    backend: str
    category: str
    file: str | None = Field(default=None, description="the file (or first shard) a deploy would use")
    note: str = ""
    metadata: ModelMetadata


def _status(exc: ModelSourceError) -> int:
    if isinstance(exc, (RepoNotFound, FileNotInRepo, ModelNotVisible)):
        return 404
    if isinstance(exc, GatedRepo):
        return 403
    if isinstance(exc, HubUnavailable):
        return 502
    return 400


def _group(g: GGUFGroup, default: GGUFGroup | None) -> FileGroupView:
    return FileGroupView(quantization=g.quantization, size=g.size, files=[FileView(path=f.path, size=f.size)
                                                                           for f in g.files],
                         shards_expected=g.shards_expected, complete=g.complete, default=g is default)


def files_view(repo: str, listing: RepoFiles) -> RepoFilesView:
    """The listing with the default quantization marked (pure, so it is tested on its own)."""
    default: GGUFGroup | None = None
    note = ""
    if listing.gguf:
        try:
            default, note = choose_gguf(listing, None)
        except FileChoiceError as exc:
            note = str(exc)
    return RepoFilesView(
        repo=repo,
        gguf=[_group(g, default) for g in sorted(listing.gguf, key=lambda g: (g.size, g.first.path))],
        mmproj=[_group(g, None) for g in listing.mmproj],
        safetensors=[FileView(path=f.path, size=f.size) for f in listing.safetensors],
        other=[FileView(path=f.path, size=f.size) for f in listing.other],
        default_file=default.first.path if default else None,
        note=note,
    )


def add_model_routes(app: FastAPI) -> None:
    @app.get("/v1/hubs/{hub}/models")
    def search_hub(hub: HubKind, search: str = Query(min_length=1, max_length=200), gguf: bool = False,
                   limit: int = Query(default=20, ge=1, le=100)) -> list[SearchHit]:
        """`gpufleet search`: repositories whose names match, most downloaded first."""
        try:
            return hub_for(hub).search(search, gguf, limit)
        except ModelSourceError as exc:
            raise HTTPException(_status(exc), str(exc)) from exc

    @app.get("/v1/hubs/{hub}/files")
    def repo_files(hub: HubKind, repo: str = Query(min_length=1, max_length=300),
                   revision: str | None = None) -> RepoFilesView:
        """`gpufleet files`: the repository's files grouped by quantization, the default marked."""
        try:
            listing = group_files(hub_for(hub).list_files(repo, revision))
        except ModelSourceError as exc:
            raise HTTPException(_status(exc), str(exc)) from exc
        return files_view(repo, listing)

    @app.post("/v1/models/inspect")
    def inspect_model(body: InspectRequest) -> InspectResult:
        """`gpufleet inspect`: what a deploy of this source would read and run, headers only."""
        try:
            choice, meta = resolve(body.source, body.category)
            backend = choose_backend(meta.format, meta.category, body.backend)
        except ModelNotVisible as exc:
            raise HTTPException(404, f"{exc} on the gpufleet server (a deploy still works if the workers "
                                     "have it, with an unknown estimate)") from exc
        except ModelSourceError as exc:
            raise HTTPException(_status(exc), str(exc)) from exc
        except NoBackend as exc:
            raise HTTPException(400, str(exc)) from exc
        first = choice.weights[0].path if choice.weights else None
        return InspectResult(source=body.source.describe(), backend=backend, category=meta.category,
                             file=first, note=choice.note, metadata=meta)
