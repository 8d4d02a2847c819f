"""Hugging Face Hub through ``huggingface_hub``: listing, search, file URLs and auth.

Listing and search are the client's own calls (``list_repo_tree``,
``list_models``); a file is located with ``hf_hub_url`` + ``get_hf_file_metadata``
(HEAD: size, commit, ETag, final location after redirects) and then read by range
with the client's headers (``build_hf_headers``). The endpoint is passed on every
call, never taken from the import-time ``HF_ENDPOINT``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers

from gpufleet.core.model_files import RepoFile
from gpufleet.sources.errors import FileNotInRepo, GatedRepo, HubUnavailable, ModelSourceError, RepoNotFound
from gpufleet.sources.hub import FileRequest, HubSettings, SearchHit
from gpufleet.sources.range_reader import call_client

DEFAULT_ENDPOINT = "https://huggingface.co"
T = TypeVar("T")


class HuggingFaceHub:
    kind = "huggingface"
    prefix = "hf"

    def __init__(self, settings: HubSettings) -> None:
        self.endpoint = settings.endpoint or DEFAULT_ENDPOINT
        self._token = settings.token_value()
        self.api = HfApi(endpoint=self.endpoint, token=self._token)

    def _call(self, fn: Callable[[], T], what: str, retry: bool = False) -> T:
        return call_client(fn, _translate, what, self.endpoint, retry)

    def list_files(self, repo: str, revision: str | None) -> list[RepoFile]:
        def listing() -> list[RepoFile]:
            entries = self.api.list_repo_tree(repo, recursive=True, revision=revision)
            return [RepoFile(e.path, int(e.size)) for e in entries if hasattr(e, "size") and hasattr(e, "blob_id")]

        return self._call(listing, f"hf:{repo}")

    def file_request(self, repo: str, path: str, revision: str | None) -> FileRequest:
        what = f"hf:{repo}/{path}"
        url = hf_hub_url(repo, path, revision=revision, endpoint=self.endpoint)
        meta = self._call(lambda: get_hf_file_metadata(url, token=self._token, endpoint=self.endpoint), what,
                          retry=True)  # a single HEAD, not retried by the client
        if meta.size is None:
            raise ModelSourceError(f"{what}: the hub gave no file size")
        headers = build_hf_headers(token=self._token)
        if urlsplit(meta.location).netloc != urlsplit(self.endpoint).netloc:
            # LFS/Xet files resolve to a signed CDN URL: it needs no token, and must not get one.
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        return FileRequest(url=meta.location, headers=headers, size=meta.size,
                           etag=meta.etag, revision=meta.commit_hash)

    def search(self, query: str, gguf: bool, limit: int) -> list[SearchHit]:
        def run() -> list[SearchHit]:
            found = self.api.list_models(
                search=query, filter="gguf" if gguf else None, sort="downloads", limit=limit
            )
            return [
                SearchHit(repo=m.id, downloads=m.downloads, likes=m.likes,
                          has_gguf=("gguf" in m.tags) if m.tags is not None else None)
                for m in found
            ]

        return self._call(run, f"hf search {query!r}")


def _translate(fn: Callable[[], T], what: str) -> T:
    """The client's exceptions → ours, with messages naming the repo/file."""
    try:
        return fn()
    except GatedRepoError as exc:
        raise GatedRepo(f"{what}: gated repository; accept its terms on the hub and give a token "
                        "(hub credentials block or HF_TOKEN)") from exc
    except RevisionNotFoundError as exc:
        raise RepoNotFound(f"{what}: revision not found") from exc
    except RepositoryNotFoundError as exc:
        raise RepoNotFound(f"{what}: repository not found (or private: give a token)") from exc
    except EntryNotFoundError as exc:
        raise FileNotInRepo(f"{what}: file not found in the repository") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            raise GatedRepo(f"{what}: access refused (HTTP {status}); give a token that can read it") from exc
        if status >= 500 or status == 429:
            raise HubUnavailable(f"{what}: hub answered HTTP {status}") from exc
        raise ModelSourceError(f"{what}: hub answered HTTP {status}") from exc
    except (httpx.TransportError, OSError) as exc:
        raise HubUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx2", "httpcore")):  # the client's own HTTP stack
            raise HubUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise
