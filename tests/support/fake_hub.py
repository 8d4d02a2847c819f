"""A protocol-faithful stand-in for the Hugging Face Hub and ModelScope, on 127.0.0.1.

It speaks the endpoints the real clients call (huggingface_hub 2.x,
modelscope/modelscope_hub 1.40/0.5), as recorded from those clients:

Hugging Face
  GET  /api/models?search=&filter=&limit=&sort=            search
  GET  /api/models/{repo}[/revision/{rev}]                  model info (id, sha, siblings)
  GET  /api/models/{repo}/tree/{rev}[/{path}]?recursive=    listing, paginated with Link: rel="next"
  HEAD/GET /{repo}/resolve/{rev}/{path}                     X-Repo-Commit, ETag, Content-Length, Range→206
  errors: 404 + X-Error-Code RepoNotFound / EntryNotFound / RevisionNotFound; gated → 401/403 + GatedRepo
ModelScope
  GET  /openapi/v1/models/{repo}          (404 → client falls back to) GET /api/v1/models/{repo}
  GET  /openapi/v1/models?search=         search
  GET  /api/v1/models/{repo}/repo/files?Revision=&Recursive=
  GET  /api/v1/models/{repo}/revisions
  GET  /api/v1/models/{repo}/repo?Revision=&FilePath=       file download, Range→206

Files may be "virtual": header bytes followed by zeros produced on demand, so a
40 GB model is served (and inspectable by range) without 40 GB anywhere. Every
request is logged with the bytes of body sent, so tests and the benchmark can
count requests and transfer. Failures can be injected (5xx, a connection cut
mid-body) to test retries and resumed downloads.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlparse

CHUNK = 1 << 20
TREE_PAGE = 50  # entries per tree page: small, so pagination is exercised


@dataclass(frozen=True)
class VirtualFile:
    """`head` followed by zeros up to `size` bytes."""

    head: bytes
    size: int

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        pos = start
        while pos < end:
            stop = min(end, pos + CHUNK)
            if pos < len(self.head):
                piece = self.head[pos:min(stop, len(self.head))]
                yield piece + bytes(stop - pos - len(piece))
            else:
                yield bytes(stop - pos)
            pos = stop


Body = bytes | VirtualFile


def _size(body: Body) -> int:
    return len(body) if isinstance(body, bytes) else body.size


def _chunks(body: Body, start: int, end: int) -> Iterator[bytes]:
    if isinstance(body, bytes):
        for pos in range(start, end, CHUNK):
            yield body[pos:min(end, pos + CHUNK)]
    else:
        yield from body.chunks(start, end)


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, Body]
    sha: str = ""
    token: str | None = None  # gated: this bearer token is required
    cdn: bool = False  # HF resolve answers 302 to a "CDN" on another host (localhost), as LFS files do
    downloads: int = 0
    likes: int = 0
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sha:
            self.sha = hashlib.sha1(self.repo_id.encode()).hexdigest()
        if any(p.endswith(".gguf") for p in self.files) and "gguf" not in self.tags:
            self.tags.append("gguf")

    def etag(self, path: str) -> str:
        return hashlib.sha256(f"{self.repo_id}/{path}/{_size(self.files[path])}".encode()).hexdigest()


@dataclass
class LoggedRequest:
    method: str
    path: str
    status: int
    body_bytes: int
    range: str | None
    authorized: bool = False  # an Authorization header or session cookie came with it


@dataclass
class Fault:
    match: str  # substring of the request path
    times: int
    status: int = 503  # or 0: cut the connection after `after_bytes` of body
    after_bytes: int = 0
    #: only downloads from byte 0 (a header read by range, or a resume, passes untouched)
    whole_only: bool = False


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.log: list[LoggedRequest] = []
        self.faults: list[Fault] = []
        self.bytes_per_second: float | None = None  # throttle bodies (progress tests)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up -----------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, Body], **kw: object) -> FakeRepo:
        repo = FakeRepo(repo_id, dict(files), **kw)  # type: ignore[arg-type]
        self.repos[repo_id] = repo
        return repo

    def fail(self, match: str, times: int = 1, status: int = 503, after_bytes: int = 0,
             whole_only: bool = False) -> None:
        with self._lock:
            self.faults.append(Fault(match, times, status, after_bytes, whole_only))

    def start(self) -> FakeHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-hub")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- the request log ------------------------------------------------------------
    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def requests(self, method: str | None = None, contains: str = "") -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method) and contains in r.path]

    def bytes_sent(self, contains: str = "") -> int:
        return sum(r.body_bytes for r in self.requests(contains=contains))

    def _take_fault(self, path: str, ranged: bool = False) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.match in path and f.times > 0 and not (f.whole_only and ranged):
                    f.times -= 1
                    return f
        return None

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.log.append(entry)


class _Done(Exception):
    pass


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            pass

        # -- plumbing -----------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            hub._record(LoggedRequest(self.command, self.path, status, 0 if self.command == "HEAD" else len(body),
                                      self.headers.get("Range"), self._sent_credentials()))
            if self.command != "HEAD":
                self.wfile.write(body)
            raise _Done

        def _json(self, doc: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(doc).encode(), headers)

        def _hf_error(self, status: int, code: str, message: str) -> None:
            self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

        def _sent_credentials(self) -> bool:
            return bool(self.headers.get("Authorization")) or "m_session_id" in self.headers.get("Cookie", "")

        def _authorized(self, repo: FakeRepo) -> bool:
            if repo.token is None:
                return True
            auth = self.headers.get("Authorization", "")
            cookie = self.headers.get("Cookie", "")
            return auth == f"Bearer {repo.token}" or f"m_session_id={repo.token}" in cookie

        def _repo(self, repo_id: str, hf: bool) -> FakeRepo:
            repo = hub.repos.get(repo_id)
            if repo is None:
                if hf:
                    self._hf_error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}")
                self._json({"Code": 10010205001, "Success": False, "Message": "model not exist"}, 404)
            assert repo is not None
            if not self._authorized(repo):
                if hf:
                    status = 403 if self.headers.get("Authorization") else 401
                    self._hf_error(status, "GatedRepo", f"Access to model {repo_id} is restricted")
                self._json({"Code": 10010205002, "Success": False, "Message": "permission denied"}, 403)
            return repo

        def _serve_file(self, repo: FakeRepo, path: str, hf: bool) -> None:
            body = repo.files.get(path)
            if body is None:
                if hf:
                    self._hf_error(404, "EntryNotFound", f"{path} does not exist on main")
                self._json({"Code": 404, "Success": False, "Message": "file not found"}, 404)
            assert body is not None
            size = _size(body)
            headers = {"ETag": f'"{repo.etag(path)}"', "Accept-Ranges": "bytes"}
            if hf:
                headers["X-Repo-Commit"] = repo.sha
            start, end, status = 0, size, 200
            rng = self.headers.get("Range")
            if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                if start >= size:
                    self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            fault = hub._take_fault(self.path, ranged=rng is not None) if self.command == "GET" else None
            if fault and fault.status:
                self._send(fault.status, b"injected failure")
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            # Logged before the body goes out (the client may return before this
            # thread runs again); corrected below if the body is cut short.
            entry = LoggedRequest(self.command, self.path, status, end - start if self.command == "GET" else 0, rng,
                                  self._sent_credentials())
            hub._record(entry)
            sent = 0
            if self.command == "GET":
                limit = fault.after_bytes if fault else None
                try:
                    for piece in _chunks(body, start, end):
                        if limit is not None and sent + len(piece) > limit:
                            self.wfile.write(piece[: limit - sent])
                            sent = limit
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(2)
                            break
                        self.wfile.write(piece)
                        sent += len(piece)
                        if hub.bytes_per_second:
                            time.sleep(len(piece) / hub.bytes_per_second)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass
                entry.body_bytes = sent
            raise _Done

        # -- routing ------------------------------------------------------------
        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            try:
                self._route()
                self._json({"error": f"no route for {self.path}"}, 404)
            except _Done:
                pass

        def _route(self) -> None:
            url = urlparse(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            if path == "/api/models":
                self._hf_search(query)
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
                self._hf_tree(m.group(1), m.group(2), m.group(3) or "", query)
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                self._hf_info(m.group(1), m.group(2))
            if m := re.fullmatch(r"/cdn/([^/]+/[^/]+)/(.+)", path):  # signed URL: no auth needed
                self._serve_file(hub.repos[m.group(1)], m.group(2), hf=True)
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                repo = self._repo(m.group(1), hf=True)
                self._hf_revision(repo, m.group(2))
                if repo.cdn and m.group(3) in repo.files:
                    self._hf_redirect(repo, m.group(3))
                self._serve_file(repo, m.group(3), hf=True)
            if path == "/openapi/v1/models":
                self._ms_search(query)
            if m := re.fullmatch(r"/openapi/v1/models/([^/]+/[^/]+)", path):
                self._ms_info(m.group(1), openapi=True)
            if m := re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)", path):
                self._ms_info(m.group(1), openapi=False)
            if m := re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)/repo/files", path):
                self._ms_files(m.group(1), query)
            if m := re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)/revisions", path):
                self._repo(m.group(1), hf=False)
                self._json({"Code": 200, "Success": True, "Data": {"RevisionMap": {
                    "Branches": [{"Revision": "master"}], "Tags": []}}})
            if m := re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)/repo", path):
                repo = self._repo(m.group(1), hf=False)
                self._serve_file(repo, query.get("FilePath", [""])[0], hf=False)

        # -- Hugging Face ----------------------------------------------------------
        def _hf_redirect(self, repo: FakeRepo, path: str) -> None:
            port = hub.url.rsplit(":", 1)[1]
            self._send(302, b"", {
                "Location": f"http://localhost:{port}/cdn/{repo.repo_id}/{quote(path)}",
                "X-Repo-Commit": repo.sha, "X-Linked-Etag": f'"{repo.etag(path)}"',
                "X-Linked-Size": str(_size(repo.files[path])),
            })

        def _hf_revision(self, repo: FakeRepo, rev: str) -> None:
            if unquote(rev) not in ("main", repo.sha):
                self._hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")

        def _hf_info(self, repo_id: str, rev: str | None) -> None:
            repo = self._repo(repo_id, hf=True)
            if rev:
                self._hf_revision(repo, rev)
            self._json({
                "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha, "private": False,
                "gated": "manual" if repo.token else False, "downloads": repo.downloads, "likes": repo.likes,
                "tags": repo.tags,
                "siblings": [{"rfilename": p, "size": _size(b)} for p, b in sorted(repo.files.items())],
            })

        def _hf_tree(self, repo_id: str, rev: str, under: str, query: dict[str, list[str]]) -> None:
            repo = self._repo(repo_id, hf=True)
            self._hf_revision(repo, rev)
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries = _tree_entries(repo, under.strip("/"), recursive)
            if under and not entries:
                self._hf_error(404, "EntryNotFound", f"{under} does not exist")
            cursor = int(query.get("cursor", ["0"])[0])
            page = entries[cursor:cursor + TREE_PAGE]
            headers = {}
            if cursor + TREE_PAGE < len(entries):
                q = f"recursive={str(recursive).lower()}&expand=false&cursor={cursor + TREE_PAGE}"
                headers["Link"] = f'<{hub.url}/api/models/{repo_id}/tree/{quote(rev)}?{q}>; rel="next"'
            self._json(page, headers=headers)

        def _hf_search(self, query: dict[str, list[str]]) -> None:
            text = query.get("search", [""])[0].lower()
            filters = query.get("filter", [])
            limit = int(query.get("limit", ["1000"])[0])
            hits = [r for r in hub.repos.values() if text in r.repo_id.lower() and r.token is None
                    and all(f in r.tags for f in filters)]
            hits.sort(key=lambda r: -r.downloads)
            self._json([{"id": r.repo_id, "modelId": r.repo_id, "downloads": r.downloads, "likes": r.likes,
                         "tags": r.tags, "private": False} for r in hits[:limit]])

        # -- ModelScope -----------------------------------------------------------
        def _ms_info(self, repo_id: str, openapi: bool) -> None:
            if openapi and repo_id not in hub.repos:
                self._json({"success": False, "code": "NotFound", "message": "not found"}, 404)
            repo = self._repo(repo_id, hf=False)
            owner, name = repo.repo_id.split("/")
            if openapi:
                self._json({"success": True, "data": {
                    "id": repo.repo_id, "owner": owner, "name": name, "downloads": repo.downloads,
                    "likes": repo.likes, "tags": repo.tags, "private": False, "gated": bool(repo.token)}})
            self._json({"Code": 200, "Success": True, "Data": {
                "Id": 1, "Path": owner, "Name": name, "Downloads": repo.downloads, "Tags": repo.tags}})

        def _ms_files(self, repo_id: str, query: dict[str, list[str]]) -> None:
            repo = self._repo(repo_id, hf=False)
            if query.get("Revision", ["master"])[0] not in ("master", repo.sha):
                self._json({"Code": 404, "Success": False, "Message": "revision not found"}, 404)
            dirs = sorted({p.rsplit("/", 1)[0] for p in repo.files if "/" in p})
            files = [{"Name": d.rsplit("/", 1)[-1], "Path": d, "Size": 0, "Type": "tree", "Revision": repo.sha}
                     for d in dirs]
            files += [{"Name": p.rsplit("/", 1)[-1], "Path": p, "Size": _size(b), "Type": "blob",
                       "Sha256": repo.etag(p), "IsLFS": _size(b) > 1 << 20, "Revision": repo.sha}
                      for p, b in sorted(repo.files.items())]
            self._json({"Code": 200, "Success": True, "Data": {"Files": files}})

        def _ms_search(self, query: dict[str, list[str]]) -> None:
            words = query.get("search", [""])[0].lower().split()
            size = int(query.get("page_size", ["10"])[0])
            hits = [r for r in hub.repos.values() if r.token is None
                    and all(w in r.repo_id.lower() or w in r.tags for w in words)]
            hits.sort(key=lambda r: -r.downloads)
            models = [{"id": r.repo_id, "owner": r.repo_id.split("/")[0], "name": r.repo_id.split("/")[1],
                       "downloads": r.downloads, "likes": r.likes, "tags": r.tags} for r in hits[:size]]
            self._json({"success": True, "data": {"models": models, "total_count": len(hits),
                                                  "page_number": 1, "page_size": size}})

    return Handler


def _tree_entries(repo: FakeRepo, under: str, recursive: bool) -> list[dict[str, object]]:
    prefix = f"{under}/" if under else ""
    out: dict[str, dict[str, object]] = {}
    for path, body in sorted(repo.files.items()):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):].split("/")
        for depth in range(1, len(rest)):
            d = prefix + "/".join(rest[:depth])
            if recursive or depth == 1:
                out.setdefault(d, {"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(),
                                   "size": 0})
            if not recursive:
                break
        if recursive or len(rest) == 1:
            size = _size(body)
            entry: dict[str, object] = {"type": "file", "path": path, "size": size, "oid": repo.etag(path)[:40]}
            if size > 1 << 20:
                entry["lfs"] = {"oid": repo.etag(path), "size": size, "pointerSize": 134}
            out[path] = entry
    return list(out.values())
