"""What gpufleet needs from a model hub, whichever hub it is.

:class:`Hub` is implemented by :mod:`gpufleet.sources.huggingface` and
:mod:`gpufleet.sources.modelscope` over their official clients; everything
above it (file choice, header reads, metadata, pulls) is shared.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, SecretStr

from gpufleet.core.model_files import RepoFile


class HubSettings(BaseModel):
    """Endpoint and token of one hub; the token never appears in repr, logs or messages."""

    endpoint: str | None = None
    token: SecretStr | None = None

    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token else None


class SearchHit(BaseModel):
    repo: str
    downloads: int | None = None
    likes: int | None = None
    has_gguf: bool | None = None


class FileRequest(BaseModel):
    """How to GET one file (for pulls): URL and headers (auth included, so never logged)."""

    url: str
    headers: dict[str, str]
    size: int
    etag: str | None = None
    revision: str | None = None

    def __repr__(self) -> str:  # the headers carry the token
        return f"FileRequest(url={self.url!r}, size={self.size})"

    __str__ = __repr__


class Hub(Protocol):
    kind: str  # "huggingface" | "modelscope"
    prefix: str  # "hf" | "modelscope", as the CLI names it

    def list_files(self, repo: str, revision: str | None) -> list[RepoFile]: ...

    def file_request(self, repo: str, path: str, revision: str | None) -> FileRequest: ...

    def search(self, query: str, gguf: bool, limit: int) -> list[SearchHit]: ...
