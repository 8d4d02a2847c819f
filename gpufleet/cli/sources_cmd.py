"""`gpufleet search`, `gpufleet files` and `gpufleet inspect`: looking at models
before deploying them. They run on the CLI's machine, straight against the hubs
(or the local path), with the same code the server and the flows use."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, NoReturn, Optional

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
from gpufleet.core.backends.choose import NoBackend, choose_backend
from gpufleet.core.metadata import CATEGORIES, ModelMetadata
from gpufleet.core.model_files import FileChoiceError, choose_gguf, group_files
from gpufleet.sources import ModelSourceError, resolve
from gpufleet.sources.resolve import hub_for


class HubName(str, Enum):
    hf = "hf"
    modelscope = "modelscope"


_KIND = {HubName.hf: "huggingface", HubName.modelscope: "modelscope"}


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def search(
    hub: Annotated[HubName, typer.Argument(help="hf or modelscope")],
    query: Annotated[str, typer.Argument(help="words to look for in repository names")],
    gguf: Annotated[bool, typer.Option("--gguf", help="only repositories with GGUF files")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="at most this many results")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search a hub for models."""
    try:
        hits = hub_for(_KIND[hub]).search(query, gguf, limit)
    except ModelSourceError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps([h.model_dump() for h in hits], indent=2))
        return
    t = Table("REPO", "DOWNLOADS", "LIKES", "GGUF", box=None)
    for h in hits:
        gg = "-" if h.has_gguf is None else ("yes" if h.has_gguf else "no")
        t.add_row(h.repo, "-" if h.downloads is None else str(h.downloads),
                  "-" if h.likes is None else str(h.likes), gg)
    console.print(t)
    if not hits:
        err_console.print(f"no {hub.value} models match {query!r}")


def files(
    hub: Annotated[HubName, typer.Argument(help="hf or modelscope")],
    repo: Annotated[str, typer.Argument(help="repository, e.g. org/name")],
    revision: RevisionOpt = None,
) -> None:
    """A repository's files: GGUF grouped by quantization (shards joined), projectors, the rest."""
    try:
        listing = group_files(hub_for(_KIND[hub]).list_files(repo, revision))
    except ModelSourceError as exc:
        _fail(str(exc))
    default = None
    try:
        default = choose_gguf(listing, None)[0] if listing.gguf else None
    except FileChoiceError:
        pass
    t = Table("", "KIND", "QUANT", "FILES", "SIZE", "NAME", box=None)
    for g in sorted(listing.gguf, key=lambda g: g.size):
        shards = f"{len(g.files)}/{g.shards_expected}" if g.shards_expected > 1 else "1"
        t.add_row("*" if g is default else "", "gguf", g.quantization, shards, _size(g.size), g.first.path)
    for g in listing.mmproj:
        t.add_row("", "mmproj", g.quantization, str(len(g.files)), _size(g.size), g.first.path)
    for f in listing.safetensors:
        t.add_row("", "safetensors", "", "1", _size(f.size), f.path)
    for f in listing.other:
        t.add_row("", "file", "", "1", _size(f.size), f.path)
    console.print(t)
    if default is not None:
        console.print(f"* default without --file: {default.quantization}")


def inspect(
    local_path: LocalPathOpt = None,
    hf: HfOpt = None,
    modelscope: ModelScopeOpt = None,
    file: FileOpt = None,
    revision: RevisionOpt = None,
    category: Annotated[Optional[str], typer.Option(help=f"override the detected category: {', '.join(CATEGORIES)}")] = None,
    backend: Annotated[Optional[str], typer.Option(help="check this backend can serve the model")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The metadata gpufleet will use for a model, read from its headers only."""
    try:
        source = source_from_options(local_path, hf, modelscope, file, revision)
    except (SourceOptionError, ValueError) as exc:
        _fail(str(exc), 2)
    if category is not None and category not in CATEGORIES:
        _fail(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}", 2)
    try:
        choice, meta = resolve(source, category)  # type: ignore[arg-type]
        chosen_backend = choose_backend(meta.format, meta.category, backend)
    except (ModelSourceError, NoBackend) as exc:
        _fail(str(exc))
    if as_json:
        doc = {"source": source.model_dump(exclude_none=True), "backend": chosen_backend,
               "choice": choice.note or None, "metadata": meta.model_dump(mode="json")}
        print(json.dumps(doc, indent=2))
        return
    console.print(_metadata_table(source.describe(), meta, chosen_backend))


def _metadata_table(name: str, m: ModelMetadata, backend: str) -> Table:
    t = Table(box=None, show_header=False)
    heads = f"{m.n_heads} / {m.n_kv_heads}" + (" (per layer varies)" if m.n_kv_heads_per_layer else "")
    rows = [
        ("source", name), ("format", m.format), ("architecture", m.architecture),
        ("category", m.category), ("backend", backend),
        ("parameters", f"{m.n_params:,} ({m.n_params / 1e9:.2f} B)"), ("layers", str(m.n_layers)),
        ("heads / kv heads", heads), ("head dims k / v", f"{m.head_dim_k} / {m.head_dim_v}"),
        ("context length", str(m.context_length)), ("vocabulary", str(m.vocab_size)),
        ("quantization", m.quantization or "-"),
        ("bits per weight", f"{m.bits_per_weight:.2f}" if m.bits_per_weight else "-"),
        ("weights", _size(m.tensor_bytes) + "".join(
            f"\n  {k}: {_size(v)}" for k, v in m.weight_bytes_by_dtype.items())),
        ("files", _size(m.file_size) + "".join(f"\n  {f.path}: {_size(f.size)}" for f in m.files)),
    ]
    if m.n_experts:
        rows.append(("experts (used)", f"{m.n_experts} ({m.n_experts_used})"))
    if m.sliding_window:
        rows.append(("sliding window", str(m.sliding_window)))
    if m.kv_lora_rank:
        rows.append(("MLA kv rank / rope dim", f"{m.kv_lora_rank} / {m.rope_head_dim}"))
    rows += [("note", n) for n in m.notes]
    for k, v in rows:
        t.add_row(k, v)
    return t


def register(app: typer.Typer) -> None:
    """Add `search`, `files` and `inspect` to the gpufleet command."""
    app.command("search")(search)
    app.command("files")(files)
    app.command("inspect")(inspect)
