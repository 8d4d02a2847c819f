"""Pulling model weights into the node-local cache.

One cache per node (``<node home>/models``, or ``GPUFLEET_MODEL_CACHE``), laid
out ``<hub>/<org>--<name>/<revision>/<path in repo>`` and shared by every
instance on the node: the second replica, and the next deployment of the same
file, find it there. Each file is downloaded under an exclusive ``flock`` on
``<file>.lock``, so two replicas pulling at once download it once (the second
waits, then sees the finished file). Bytes go to ``<file>.part`` with a sidecar
naming the ETag and size; an interrupted download resumes with a ``Range``
request from where the part ends, as long as the remote file is the same one.
Progress (bytes, %, rate) is reported through a callback, throttled.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from gpufleet.core.model_files import RepoFile
from gpufleet.core.schemas import ModelSource
from gpufleet.sources.errors import HubUnavailable, ModelSourceError
from gpufleet.sources.hub import FileRequest
from gpufleet.sources.range_reader import check_status, http_client
from gpufleet.sources.resolve import FileChoice, choose_files, hub_for
from gpufleet.sources.stores import HubStore

DOWNLOAD_ATTEMPTS = 6  # each attempt resumes where the last one stopped


class CacheFull(ModelSourceError):
    """The node's model cache has no room for a file: said before a byte is written when
    the free space is known to be short, else when a write fails (ENOSPC/EDQUOT), and then
    the partial file is removed, so the cache holds nothing half-written."""


def _check_room(dest: Path, name: str, needed: int) -> None:
    free = shutil.disk_usage(_existing(dest)).free
    if needed > free:
        raise CacheFull(f"not enough disk space in the model cache {dest} for {name}: it needs "
                        f"{_human(needed)} more, {_human(free)} free; free space or move the cache "
                        f"(GPUFLEET_MODEL_CACHE)")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
BACKOFF_S = 0.5
REPORT_EVERY_S = 1.0
WAIT_POLL_S = 0.5


@dataclass(frozen=True)
class PullProgress:
    done: int
    total: int
    rate: float  # bytes per second, over the pull so far
    file: str

    @property
    def percent(self) -> int:
        return int(self.done * 100 / self.total) if self.total else 100

    def describe(self) -> str:
        return (f"DOWNLOADING {self.percent} % ({_human(self.done)} of {_human(self.total)}, "
                f"{_human(self.rate)}/s) {self.file}")


ProgressFn = Callable[[PullProgress], None]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cache_root(node_home: Path) -> Path:
    override = os.environ.get("GPUFLEET_MODEL_CACHE")
    return Path(override) if override else node_home / "models"


def repo_dir(root: Path, source: ModelSource) -> Path:
    assert source.repo is not None
    prefix = {"huggingface": "hf", "modelscope": "modelscope"}[source.kind]
    revision = (source.revision or "default").replace("/", "--")
    return root / prefix / source.repo.replace("/", "--") / revision


class _Throttle:
    """Calls `fn` at most once per `every` seconds, and always for the last report."""

    def __init__(self, fn: ProgressFn | None, total: int, every: float = REPORT_EVERY_S) -> None:
        self.fn, self.total, self.every = fn, total, every
        self.started = time.monotonic()
        self.last = 0.0
        self.base = 0  # bytes of files already finished

    def __call__(self, done_in_file: int, file: str, final: bool = False) -> None:
        now = time.monotonic()
        if self.fn is None or (not final and now - self.last < self.every):
            return
        self.last = now
        done = self.base + done_in_file
        self.fn(PullProgress(done, self.total, done / max(now - self.started, 1e-6), file))


def pull_hub_model(source: ModelSource, node_home: Path, progress: ProgressFn | None = None) -> Path:
    """Download what the source's chosen files need; return what the backend is
    pointed at (the first GGUF shard, or the checkpoint directory)."""
    hub = hub_for(source.kind)
    assert source.repo is not None
    store = HubStore(hub, source.repo, source.revision)
    choice: FileChoice = choose_files(store, source.file)
    dest = repo_dir(cache_root(node_home), source)
    files = choice.all_files
    throttle = _Throttle(progress, sum(f.size for f in files))
    for f in files:
        download(lambda f=f: hub.file_request(source.repo, f.path, source.revision), dest, f, throttle)  # type: ignore[misc]
        throttle.base += f.size
    throttle(0, files[-1].path if files else "", final=True)
    return dest / choice.entry if choice.format == "gguf" else dest


@contextmanager
def file_lock(path: Path, while_waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive lock held by whoever downloads `path` (threads and processes alike:
    flock locks belong to the open file, not the process). A waiter calls
    `while_waiting` twice a second, so its instance shows the other pull's progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if while_waiting is not None:
                    while_waiting()
                time.sleep(WAIT_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def download(request: Callable[[], FileRequest], dest: Path, f: RepoFile, report: _Throttle) -> Path:
    """One file into the cache, once: cached → nothing to do; else resume the
    ``.part`` if it belongs to the same remote file, retrying with backoff."""
    final = dest / f.path
    if _complete(final, f.size):
        return final
    part = Path(f"{final}.part")

    def show_other_pull() -> None:
        try:
            done = part.stat().st_size
        except FileNotFoundError:  # not begun, or just renamed into place: the lock tells next
            return
        report(done, f.path)

    with file_lock(final, show_other_pull):
        if _complete(final, f.size):  # another replica finished it while we waited
            return final
        req = request()
        sidecar = Path(f"{final}.part.json")
        _drop_stale_part(part, sidecar, req)
        _check_room(final.parent, f.path, req.size - (part.stat().st_size if part.exists() else 0))
        last_error = ""
        try:
            sidecar.write_text(json.dumps({"etag": req.etag, "size": req.size}))
            for attempt in range(DOWNLOAD_ATTEMPTS):
                try:
                    _fetch_into(req, part, f.path, report)
                    break
                except HubUnavailable as exc:
                    last_error = str(exc)
                    time.sleep(BACKOFF_S * 2**attempt)
            else:
                raise HubUnavailable(f"{f.path}: download failed after {DOWNLOAD_ATTEMPTS} attempts ({last_error}); "
                                     f"{part.stat().st_size if part.exists() else 0} of {req.size} bytes kept for "
                                     "resuming")
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            kept = part.stat().st_size if part.exists() else 0
            part.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            raise CacheFull(f"the model cache {final.parent} ran out of disk space writing {f.path} "
                            f"({_human(kept)} of {_human(req.size)} written, removed): {exc.strerror}; free "
                            f"space or move the cache (GPUFLEET_MODEL_CACHE)") from exc
        if part.stat().st_size != req.size:
            raise ModelSourceError(f"{f.path}: downloaded {part.stat().st_size} bytes, expected {req.size}")
        os.replace(part, final)
        sidecar.unlink(missing_ok=True)
    return final


def _complete(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _drop_stale_part(part: Path, sidecar: Path, req: FileRequest) -> None:
    """A part from another version of the file (ETag or size changed) cannot be resumed."""
    try:
        old = json.loads(sidecar.read_text())
    except (FileNotFoundError, ValueError):
        old = None
    if old != {"etag": req.etag, "size": req.size} or (part.exists() and part.stat().st_size > req.size):
        part.unlink(missing_ok=True)


def _fetch_into(req: FileRequest, part: Path, name: str, report: _Throttle) -> None:
    have = part.stat().st_size if part.exists() else 0
    if have == req.size:
        return
    headers = {**req.headers, "Range": f"bytes={have}-"} if have else dict(req.headers)
    try:
        with http_client().stream("GET", req.url, headers=headers, timeout=httpx.Timeout(60.0, connect=10.0)) as resp:
            if resp.status_code >= 500 or resp.status_code == 429:
                raise HubUnavailable(f"{name}: hub answered HTTP {resp.status_code}")
            check_status(resp, name)
            mode = "ab" if resp.status_code == 206 else "wb"  # 200: the server restarted from byte 0
            done = have if mode == "ab" else 0
            with part.open(mode) as out:
                for chunk in resp.iter_bytes():  # as received: an interruption loses nothing written
                    out.write(chunk)
                    done += len(chunk)
                    report(done, name)
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise HubUnavailable(f"{name}: {type(exc).__name__}: {exc}") from exc
    if part.stat().st_size < req.size:
        raise HubUnavailable(f"{name}: connection ended at byte {part.stat().st_size} of {req.size}")
