"""Node-local disk bounds: least recently used RPC cache files go first; logs of running
instances are never removed; bad limits are refused naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpufleet.node import disk_bounds
from gpufleet.node.disk_bounds import Limits


def write(path: Path, size: int, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    t = 1_700_000_000 - age_s
    os.utime(path, (t, t))
    return path


def test_rpc_cache_least_recently_used_go_first(tmp_path: Path) -> None:
    cache, logs = tmp_path / "rpc-cache", tmp_path / "logs"
    old = write(cache / "rpc/aaa", 400, 300)
    mid = write(cache / "rpc/bbb", 400, 200)
    new = write(cache / "rpc/ccc", 400, 100)
    # 1200 B > 900 B: the oldest (400 B) goes → 800 B ≤ 900 B
    removed = disk_bounds.cleanup(cache, logs, [], Limits(rpc_cache_bytes=900, logs_bytes=10**9))
    assert removed == [old] and mid.exists() and new.exists()


def test_logs_of_running_instances_stay(tmp_path: Path) -> None:
    cache, logs = tmp_path / "rpc-cache", tmp_path / "logs"
    running_old = write(logs / "7-chat-aa.log.3", 500, 900)
    gone = write(logs / "3-chat-bb.log", 500, 800)
    gone_prev = write(logs / "3-chat-bb.log.1", 500, 700)
    running_new = write(logs / "7-chat-aa.log", 500, 10)
    # 2000 B > 1000 B: instance 7 runs, so its logs stay; 3's two logs go (oldest first) → 1000 B
    removed = disk_bounds.cleanup(cache, logs, [7], Limits(rpc_cache_bytes=10**9, logs_bytes=1000))
    assert removed == [gone, gone_prev] and running_old.exists() and running_new.exists()


def test_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_RPC_CACHE_MAX_GIB", "0.5")
    monkeypatch.delenv("GPUFLEET_LOG_DIR_MAX_GIB", raising=False)
    assert disk_bounds.limits() == Limits(1 << 29, 2 << 30)
    monkeypatch.setenv("GPUFLEET_LOG_DIR_MAX_GIB", "lots")
    with pytest.raises(ValueError, match="GPUFLEET_LOG_DIR_MAX_GIB"):
        disk_bounds.limits()
