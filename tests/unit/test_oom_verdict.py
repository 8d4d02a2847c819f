"""The OOM verdict of a process backend, from its memory cgroup's kill count (v1 and v2 files)."""

from __future__ import annotations

from pathlib import Path

from gpufleet.node import oom
from gpufleet.node.runtimes import ExitStatus


def test_verdict_when_the_kill_count_grew_v1(tmp_path: Path) -> None:
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (tmp_path / "memory.limit_in_bytes").write_text(str(64 * 2**20))
    seen = oom.OomWatch(tmp_path, 2)
    assert oom.verdict(seen) is None  # not grown: a plain SIGKILL
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert oom.verdict(seen) == f"OOM: killed by the kernel for running out of memory (memory cgroup {tmp_path}, limit 64 MiB)"


def test_verdict_v2_without_a_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    (tmp_path / "memory.max").write_text("max\n")
    assert oom.verdict(oom.OomWatch(tmp_path, 0)) == f"OOM: killed by the kernel for running out of memory (memory cgroup {tmp_path})"
    assert oom.verdict(None) is None


def test_exit_status_names_the_signal() -> None:
    assert ExitStatus(-9).describe() == ", killed by SIGKILL"
    assert ExitStatus(1).describe() == " with code 1"
    assert ExitStatus(-9, True, "OOM: x").describe() == ", killed by SIGKILL (OOM: x)"
