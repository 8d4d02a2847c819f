"""ModelScope through its official client (``modelscope_hub``, which ``modelscope``
1.40 builds on): repo info, file listing (which keeps directory ``type``, unlike
``modelscope.HubApi.get_model_files``), search, and the file download URL, read
by range with the client's auth (``Authorization: Bearer`` and the
``m_session_id`` cookie the legacy endpoints want)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import httpx
from modelscope_hub import HubApi
from modelscope_hub import errors as ms_errors

from gpufleet.core.model_files import RepoFile
from gpufleet.sources.errors import FileNotInRepo, GatedRepo, HubUnavailable, ModelSourceError, RepoNotFound
from gpufleet.sources.hub import FileRequest, HubSettings, SearchHit
from gpufleet.sources.range_reader import call_client

DEFAULT_ENDPOINT = "https://www.modelscope.cn"
DEFAULT_REVISION = "master"
T = TypeVar("T")


class ModelScopeHub:
    kind = "modelscope"
    prefix = "modelscope"

    def __init__(self, settings: HubSettings) -> None:
        self.endpoint = settings.endpoint or DEFAULT_ENDPOINT
        self._token = settings.token_value()
        self.api = HubApi(endpoint=self.endpoint, token=self._token)
        self._listings: dict[tuple[str, str], list[RepoFile]] = {}

    def _call(self, fn: Callable[[], T], what: str, retry: bool = False) -> T:
        return call_client(fn, _translate, what, self.endpoint, retry)

    def list_files(self, repo: str, revision: str | None) -> list[RepoFile]:
        key = (repo, revision or DEFAULT_REVISION)
        if key not in self._listings:
            def listing() -> list[RepoFile]:
                self.api.get_repo(repo, "model", revision=key[1])  # 404 → unknown repo, before listing
                files = self.api.list_repo_files(repo, "model", revision=key[1], recursive=True)
                return [RepoFile(f.path, int(f.size or 0)) for f in files if str(f.type) != "tree"]

            self._listings[key] = self._call(listing, f"modelscope:{repo}")
        return self._listings[key]

    def _headers(self) -> dict[str, str]:
        if not self._token:
            return {}
        return {"Authorization": f"Bearer {self._token}", "Cookie": f"m_session_id={self._token}"}

    def file_request(self, repo: str, path: str, revision: str | None) -> FileRequest:
        rev = revision or DEFAULT_REVISION
        sizes = {f.path: f.size for f in self.list_files(repo, rev)}
        if path not in sizes:
            raise FileNotInRepo(f"modelscope:{repo}/{path}: file not found in the repository")
        url = self.api.legacy.get_download_url(repo, "model", path, revision=rev)
        return FileRequest(url=url, headers=self._headers(), size=sizes[path], revision=rev)

    def search(self, query: str, gguf: bool, limit: int) -> list[SearchHit]:
        """ModelScope's search has no file-format filter: with `gguf`, "gguf" joins
        the query (GGUF repositories say so in their names or tags)."""
        def run() -> list[SearchHit]:
            page = self.api.list_repos("model", search=f"{query} gguf" if gguf else query,
                                       sort="downloads", page_size=min(limit, 100))
            return [_hit(r) for r in page.items][:limit]

        return self._call(run, f"modelscope search {query!r}")


def _hit(r: object) -> SearchHit:
    repo_id = getattr(r, "id", None)
    repo = repo_id if isinstance(repo_id, str) and "/" in repo_id else f"{getattr(r, 'owner', '')}/{getattr(r, 'name', '')}"
    tags = [str(t).lower() for t in getattr(r, "tags", []) or []]
    says_gguf = "gguf" in repo.lower() or any("gguf" in t for t in tags)
    return SearchHit(repo=repo, downloads=getattr(r, "downloads", None), likes=getattr(r, "likes", None),
                     has_gguf=True if says_gguf else None)


def _translate(fn: Callable[[], T], what: str) -> T:
    try:
        return fn()
    except (ms_errors.AuthenticationError, ms_errors.PermissionDeniedError) as exc:
        raise GatedRepo(f"{what}: access refused; give a ModelScope token that can read it") from exc
    except ms_errors.NotExistError as exc:  # NotFoundError is a subclass
        raise RepoNotFound(f"{what}: repository or revision not found") from exc
    except (ms_errors.NetworkError, ms_errors.ServerError, ms_errors.RequestTimeoutError,
            ms_errors.RateLimitError, httpx.TransportError) as exc:
        raise HubUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    except ms_errors.HubError as exc:
        raise ModelSourceError(f"{what}: {type(exc).__name__}: {exc}") from exc
