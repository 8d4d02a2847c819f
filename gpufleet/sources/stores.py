"""Where a model's files live: a local directory or a hub repository, behind one
small interface so that file choice, header reads and pulls are written once."""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Hashable
from typing import Protocol

from gpufleet.core.model_files import RepoFile
from gpufleet.sources.errors import FileNotInRepo, ModelSourceError
from gpufleet.sources.hub import FileRequest, Hub
from gpufleet.sources.range_reader import HttpRangeReader, LocalRangeReader, RangeReader, http_client

MAX_LOCAL_FILES = 20_000  # a model directory, not a whole disk
MAX_LOCAL_DEPTH = 3


class FileStore(Protocol):
    name: str  # "hf:org/name", "/models/x": what messages call it

    def list_files(self) -> list[RepoFile]: ...

    def reader(self, path: str) -> RangeReader: ...

    def read_small(self, path: str, max_bytes: int) -> bytes: ...

    def identity(self, path: str) -> Hashable | None:
        """Something that changes when the file does (None: unknown, do not cache)."""


class LocalStore:
    """A model directory, or (``siblings_of``) the directory of one model file, of
    which only that file's GGUF siblings are listed (its other shards and
    projectors): a model in ~/Downloads must not cost a walk of ~/Downloads."""

    def __init__(self, root: Path, siblings_of: str | None = None) -> None:
        self.root = root
        self.siblings_of = siblings_of
        self.name = str(root)

    def list_files(self) -> list[RepoFile]:
        if self.siblings_of is not None:
            return self._siblings(self.siblings_of)
        out: list[RepoFile] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            if len(rel.parts) >= MAX_LOCAL_DEPTH:
                dirnames.clear()
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                p = Path(dirpath) / fn
                try:
                    out.append(RepoFile((rel / fn).as_posix(), p.stat().st_size))
                except OSError:
                    continue
                if len(out) > MAX_LOCAL_FILES:
                    raise ModelSourceError(f"{self.root} holds over {MAX_LOCAL_FILES} files; point at the model itself")
        return out

    def _siblings(self, name: str) -> list[RepoFile]:
        out = []
        with os.scandir(self.root) as entries:
            for e in entries:
                if e.name == name or (e.name.lower().endswith(".gguf") and e.is_file()):
                    out.append(RepoFile(e.name, e.stat().st_size))
                    if len(out) > MAX_LOCAL_FILES:
                        raise ModelSourceError(f"{self.root} holds over {MAX_LOCAL_FILES} GGUF files")
        return out

    def _path(self, path: str) -> Path:
        p = self.root / path
        if not p.is_file():
            raise FileNotInRepo(f"{p} not found")
        if not os.access(p, os.R_OK):
            raise ModelSourceError(f"model path {p} is not readable")
        return p

    def reader(self, path: str) -> RangeReader:
        return LocalRangeReader(self._path(path))

    def identity(self, path: str) -> Hashable | None:
        p = self._path(path)
        st = p.stat()
        return (str(p.resolve()), st.st_size, st.st_mtime_ns)

    def read_small(self, path: str, max_bytes: int) -> bytes:
        p = self._path(path)
        if p.stat().st_size > max_bytes:
            raise ModelSourceError(f"{p} is over the {max_bytes}-byte limit")
        return p.read_bytes()


class HubStore:
    def __init__(self, hub: Hub, repo: str, revision: str | None) -> None:
        self.hub, self.repo, self.revision = hub, repo, revision
        self.name = f"{hub.prefix}:{repo}" + (f"@{revision}" if revision else "")
        self._files: list[RepoFile] | None = None
        self._requests: dict[str, FileRequest] = {}

    def list_files(self) -> list[RepoFile]:
        if self._files is None:
            self._files = self.hub.list_files(self.repo, self.revision)
        return self._files

    def _request(self, path: str) -> FileRequest:
        """One HEAD per file per resolve, shared by the cache identity and the reader."""
        if path not in self._requests:
            self._requests[path] = self.hub.file_request(self.repo, path, self.revision)
        return self._requests[path]

    def reader(self, path: str) -> RangeReader:
        req = self._request(path)
        return HttpRangeReader(http_client(), req.url, req.headers, req.size, f"{self.hub.prefix}:{self.repo}/{path}")

    def read_small(self, path: str, max_bytes: int) -> bytes:
        r = self.reader(path)
        if r.size > max_bytes:
            raise ModelSourceError(f"{r.name} is {r.size} bytes, over the {max_bytes}-byte limit")
        return r.read(0, r.size)

    def identity(self, path: str) -> Hashable | None:
        """The ETag and commit from one HEAD, when the hub gives them (Hugging Face does)."""
        req = self._request(path)
        if not req.etag:
            return None
        return (self.hub.kind, self.repo, path, req.revision, req.etag, req.size)
