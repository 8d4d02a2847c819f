"""From a :class:`ModelSource` to the files a deploy needs and the model's metadata.

Two steps, because the node needs only the first: :func:`choose_files` (a
listing and the file choice: which quantization, which shards, which
config/tokenizer files) and :func:`read_model` (header reads by range plus the
conversion to :class:`ModelMetadata`).
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.core.gguf import GGUFHeader
from gpufleet.core.metadata import Category, ModelFormat, ModelMetadata, WeightFile
from gpufleet.core.model_config import (
    ConfigError,
    ModelConfig,
    category_from_config,
    category_from_gguf,
    diffusers_pipeline,
    parse_config,
)
from gpufleet.core.model_files import (
    FileChoiceError,
    RepoFile,
    choose_gguf,
    choose_mmproj,
    group_files,
    safetensors_weights,
)
from gpufleet.core.model_metadata import metadata_from_ctranslate2, metadata_from_gguf
from gpufleet.core.safetensors import SafetensorsError, parse_safetensors_index
from gpufleet.core.schemas import ModelSource
from gpufleet.sources.credentials import hub_settings
from gpufleet.sources.errors import FileNotInRepo, ModelNotVisible, ModelSourceError, NotAModel
from gpufleet.sources.headers import read_gguf_header, read_safetensors_header
from gpufleet.sources.hub import Hub
from gpufleet.sources.stores import FileStore, HubStore, LocalStore

MAX_JSON_BYTES = 64 << 20
INDEX_NAME = "model.safetensors.index.json"
# Files a transformers checkpoint needs beside its weights (tokenizer, configs).
_SIDE_EXTENSIONS = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".py")


@dataclass(frozen=True)
class FileChoice:
    format: ModelFormat
    weights: list[RepoFile]
    extras: list[RepoFile] = field(default_factory=list)
    note: str = ""
    quantization: str | None = None
    mmproj: RepoFile | None = None
    config_name: str | None = None  # config.json or model_index.json

    @property
    def entry(self) -> str:
        """What the backend is pointed at: the first GGUF shard, or the checkpoint directory."""
        return self.weights[0].path if self.format == "gguf" else "."

    @property
    def all_files(self) -> list[RepoFile]:
        return self.weights + self.extras


def hub_for(kind: str) -> Hub:
    if kind == "huggingface":
        from gpufleet.sources.huggingface import HuggingFaceHub

        return HuggingFaceHub(hub_settings("huggingface"))
    if kind == "modelscope":
        from gpufleet.sources.modelscope import ModelScopeHub

        return ModelScopeHub(hub_settings("modelscope"))
    raise ModelSourceError(f"unknown hub {kind!r}")


def open_store(source: ModelSource) -> tuple[FileStore, str | None]:
    """The store and the file pattern within it."""
    if source.kind == "local_path":
        assert source.local_path is not None
        p = Path(source.local_path).expanduser()
        if not p.exists():
            raise ModelNotVisible(f"model path {source.local_path} not found")
        if p.is_dir():
            return LocalStore(p), None
        if p.name.endswith(".safetensors"):  # a checkpoint shard: the checkpoint is its directory
            return LocalStore(p.parent), None
        return LocalStore(p.parent, siblings_of=p.name), p.name
    assert source.repo is not None
    return HubStore(hub_for(source.kind), source.repo, source.revision), source.file


def choose_files(store: FileStore, pattern: str | None) -> FileChoice:
    files = store.list_files()
    if isinstance(store, LocalStore) and pattern and not pattern.lower().endswith((".gguf", ".safetensors")):
        # A local file named anything: it is read as GGUF (the magic decides).
        return FileChoice("gguf", [f for f in files if f.path == pattern], note="")
    listing = group_files(files)
    names = {f.path for f in files}
    try:
        if listing.gguf and not (pattern and pattern.endswith(".safetensors")):
            group, note = choose_gguf(listing, pattern)
            mmproj = choose_mmproj(listing)
            return FileChoice("gguf", list(group.files), note=note, quantization=group.quantization,
                              mmproj=mmproj.first if mmproj else None)
        if "model_index.json" in names:
            return _diffusers_choice(files)
        if listing.safetensors:
            index = None
            if INDEX_NAME in names:
                index = parse_safetensors_index(store.read_small(INDEX_NAME, MAX_JSON_BYTES)).shards
            weights = safetensors_weights(listing, index)
            extras = [f for f in files if "/" not in f.path and f.path.endswith(_SIDE_EXTENSIONS)]
            if "config.json" not in names:
                raise NotAModel(f"{store.name} has safetensors files but no config.json")
            return FileChoice("safetensors", weights, extras, note="", config_name="config.json")
    except (FileChoiceError, SafetensorsError) as exc:
        raise FileNotInRepo(f"{store.name}: {exc}") from exc
    if not pattern and _is_ctranslate2(names):
        return _ctranslate2_choice(files)
    if pattern:
        raise FileNotInRepo(f"{store.name}: no model file matches {pattern!r}")
    raise NotAModel(
        f"{store.name} holds no GGUF or safetensors model "
        f"({len(files)} files{': ' + ', '.join(sorted(names)[:5]) if names else ''})"
    )


# A CTranslate2 model: `model.bin` (its own binary format, not torch's `pytorch_model.bin`) with
# `config.json` and a vocabulary (`vocabulary.json`/`.txt`, or `tokenizer.json` for Whisper).
_CT2_VOCABULARIES = ("vocabulary.json", "vocabulary.txt", "tokenizer.json")


def _is_ctranslate2(names: set[str]) -> bool:
    return {"model.bin", "config.json"} <= names and any(v in names for v in _CT2_VOCABULARIES)


def _ctranslate2_choice(files: list[RepoFile]) -> FileChoice:
    weights = [f for f in files if f.path == "model.bin"]
    extras = [f for f in files if "/" not in f.path and f.path.endswith(_SIDE_EXTENSIONS)]
    return FileChoice("ctranslate2", weights, extras, config_name="config.json")


def _diffusers_choice(files: list[RepoFile]) -> FileChoice:
    weights = [f for f in files if f.path.endswith(".safetensors") and "/" in f.path]
    extras = [f for f in files if f.path.endswith((".json", ".txt", ".model")) and f not in weights]
    return FileChoice("safetensors", weights, extras, config_name="model_index.json")


_CACHE: OrderedDict[Hashable, ModelMetadata] = OrderedDict()
_CACHE_SIZE = 64
_cache_lock = threading.Lock()


def read_model(store: FileStore, choice: FileChoice, label: str, category: Category | None = None) -> ModelMetadata:
    """Header reads only; `label` (the repo id or path) feeds category detection.

    Results are cached by the identity of the weight files (path, size, mtime
    locally; ETag and commit on Hugging Face), so the server's validation and the
    deploy flow's fetch-metadata parse a 70B header once, not twice."""
    ids = [store.identity(f.path) for f in choice.weights] if choice.format == "gguf" else [None]
    key = None if None in ids else (tuple(ids), label, category, choice.note)
    if key is not None:
        with _cache_lock:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
    meta = _read_model(store, choice, label, category)
    if key is not None:
        with _cache_lock:
            _CACHE[key] = meta
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return meta


def clear_cache() -> None:
    with _cache_lock:
        _CACHE.clear()


def _read_model(store: FileStore, choice: FileChoice, label: str, category: Category | None) -> ModelMetadata:
    if choice.format == "gguf":
        return _gguf_metadata(store, choice, label, category)
    if choice.format == "ctranslate2":
        return metadata_from_ctranslate2([WeightFile(path=f.path, size=f.size) for f in choice.weights], category)
    if choice.config_name == "model_index.json":
        return _diffusers_metadata(store, choice)
    return _safetensors_metadata(store, choice, label, category)


def _gguf_metadata(store: FileStore, choice: FileChoice, label: str, category: Category | None) -> ModelMetadata:
    headers = [read_gguf_header(store.reader(f.path)) for f in choice.weights]
    merged = merge_shards(headers)
    total = sum(f.size for f in choice.weights)
    try:
        meta = metadata_from_gguf(merged, total)
    except ValueError as exc:
        raise NotAModel(f"{store.name}/{choice.weights[0].path}: {exc}") from exc
    arch = merged.architecture or ""
    pooling = merged.get(f"{arch}.pooling_type")
    files = [WeightFile(path=f.path, size=f.size) for f in choice.weights]
    update: dict[str, object] = {
        "files": files, "file_size": total,
        "category": category or category_from_gguf(arch, label, pooling if isinstance(pooling, int) else None),
        "quantization": meta.quantization or choice.quantization,
    }
    notes = [*meta.notes, *([choice.note] if choice.note else [])]
    if choice.mmproj is not None and not meta.mmproj_bytes:
        notes.append(f"projector {choice.mmproj.path} ({choice.mmproj.size} bytes) available")
    update["notes"] = notes
    return meta.model_copy(update=update)


def merge_shards(headers: list[GGUFHeader]) -> GGUFHeader:
    """One header for a split model: the first shard's metadata (gguf-split puts
    the model's keys there) and every shard's tensors. Offsets stay per shard;
    only sizes matter to estimation."""
    first = headers[0]
    if len(headers) == 1:
        return first
    tensors = tuple(t for h in headers for t in h.tensors)
    return GGUFHeader(version=first.version, metadata=first.metadata, tensors=tensors,
                      alignment=first.alignment, header_size=first.header_size, data_offset=first.data_offset)


def _config(store: FileStore, name: str) -> bytes:
    return store.read_small(name, MAX_JSON_BYTES)


def _safetensors_metadata(store: FileStore, choice: FileChoice, label: str, category: Category | None) -> ModelMetadata:
    from gpufleet.sources.safetensors_meta import metadata_from_safetensors

    try:
        config: ModelConfig = parse_config(_config(store, "config.json"))
    except ConfigError as exc:
        raise NotAModel(f"{store.name}/config.json: {exc}") from exc
    headers = [read_safetensors_header(store.reader(f.path)) for f in choice.weights]
    names = tuple(f.path for f in choice.extras)
    cat = category or category_from_config(config, label, names)
    return metadata_from_safetensors(config, headers, choice.weights, cat)


def _diffusers_metadata(store: FileStore, choice: FileChoice) -> ModelMetadata:
    from gpufleet.sources.safetensors_meta import metadata_from_safetensors

    try:
        pipeline = diffusers_pipeline(_config(store, "model_index.json"))
    except ConfigError as exc:
        raise NotAModel(f"{store.name}/model_index.json: {exc}") from exc
    headers = [read_safetensors_header(store.reader(f.path)) for f in choice.weights]
    meta = metadata_from_safetensors(ModelConfig(architecture=pipeline), headers, choice.weights, "image")
    components = sorted({posixpath.dirname(f.path) for f in choice.weights})
    return meta.model_copy(update={"notes": [*meta.notes, f"diffusers components: {', '.join(components)}"]})


def resolve(source: ModelSource, category: Category | None = None) -> tuple[FileChoice, ModelMetadata]:
    store, pattern = open_store(source)
    choice = choose_files(store, pattern)
    label = source.repo or source.local_path or ""
    return choice, read_model(store, choice, label, category)
