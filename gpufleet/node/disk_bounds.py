"""Node-local disk stays bounded: the RPC tensor cache and the backend logs.

An rpc-server started with ``--cache`` keeps every large tensor it was sent under
``<node home>/rpc-cache/rpc/`` so that a restarted instance sends a hash instead of the
tensor; nothing ever removes them, and each distributed model adds its weights. Backend logs
(one per run, the previous runs kept, each previous one already cut to 8 MiB) pile up
for every instance the node ever ran. The agent's clean-up round (every CLEANUP_INTERVAL_S)
removes the least recently used cache files beyond ``GPUFLEET_RPC_CACHE_MAX_GIB`` (default 20)
and the oldest logs of instances this node no longer runs beyond ``GPUFLEET_LOG_DIR_MAX_GIB``
(default 2). A removed cache file costs one full tensor send on the next load, never
correctness; a log of a running backend is never removed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gpufleet.settings import env_number

log = logging.getLogger(__name__)

GiB = 1 << 30
CLEANUP_INTERVAL_S = 60.0
_INSTANCE_OF_LOG = re.compile(r"^(\d+)-")


@dataclass(frozen=True)
class Limits:
    rpc_cache_bytes: int
    logs_bytes: int


def limits() -> Limits:
    """From the environment (GiB, fractions allowed; 0 empties the directory)."""
    return Limits(int(env_number("GPUFLEET_RPC_CACHE_MAX_GIB", 20, positive=False) * GiB),
                  int(env_number("GPUFLEET_LOG_DIR_MAX_GIB", 2, positive=False) * GiB))


def _files(root: Path) -> list[tuple[float, int, Path]]:
    """(last use, size, path) of every file under ``root``; files vanishing meanwhile are skipped."""
    out = []
    for path in root.rglob("*") if root.exists() else ():
        try:
            st = path.stat()
        except OSError:
            continue
        if path.is_file():
            out.append((max(st.st_atime, st.st_mtime), st.st_size, path))
    return out


def prune(root: Path, max_bytes: int, removable: Callable[[Path], bool] = lambda _: True) -> list[Path]:
    """Remove the least recently used removable files under ``root`` until its files take at
    most ``max_bytes``; returns what was removed."""
    files = sorted(_files(root))
    total = sum(size for _, size, _ in files)
    removed = []
    for _, size, path in files:
        if total <= max_bytes:
            break
        if not removable(path):
            continue
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        removed.append(path)
    return removed


def cleanup(rpc_cache: Path, logs: Path, running: Iterable[int], bounds: Limits | None = None) -> list[Path]:
    """One clean-up round; ``running``: ids of the instances this node runs backends for."""
    bounds = bounds or limits()
    live = set(running)

    def old_log(path: Path) -> bool:
        m = _INSTANCE_OF_LOG.match(path.name)
        return m is None or int(m.group(1)) not in live

    removed = prune(rpc_cache, bounds.rpc_cache_bytes) + prune(logs, bounds.logs_bytes, old_log)
    if removed:
        log.info("disk bounds: removed %d file(s) (RPC cache ≤ %d MiB, logs ≤ %d MiB)", len(removed),
                 bounds.rpc_cache_bytes >> 20, bounds.logs_bytes >> 20)
    return removed
