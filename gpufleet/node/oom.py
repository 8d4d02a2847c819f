"""The kernel's OOM verdict for a process backend, read from its memory cgroup.

A container runtime says "OOMKilled"; a plain process gets SIGKILL and nothing else. The
kernel does count OOM kills per memory cgroup, though (cgroup v1 ``memory.oom_control``,
v2 ``memory.events``: ``oom_kill N``). So while a backend lives, supervision notes its
cgroup and that count (:class:`OomWatch`, refreshed every round: a backend may be moved into
a limited cgroup after it started); when it dies by SIGKILL and the count of that cgroup has
grown, the kernel killed it for memory, and the ERROR says so, with the cgroup's limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class OomWatch:
    cgroup: Path
    oom_kills: int


def memory_cgroup(pid: int, root: Path = CGROUP_ROOT) -> Path | None:
    """The directory of ``pid``'s memory cgroup (v1 ``memory`` controller, else v2), if readable."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v2: Path | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            for base in (root / "memory", root):
                if (base / path.lstrip("/") / "memory.oom_control").exists():
                    return base / path.lstrip("/")
        if controllers == "":
            for base in (root, root / "unified"):
                if (base / path.lstrip("/") / "memory.events").exists():
                    v2 = base / path.lstrip("/")
    return v2


def oom_kills(cgroup: Path) -> int | None:
    """The kernel's count of OOM kills in this cgroup (None if it does not say)."""
    for name in ("memory.events", "memory.oom_control"):
        try:
            text = (cgroup / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


def watch(pid: int) -> OomWatch | None:
    cgroup = memory_cgroup(pid)
    if cgroup is None:
        return None
    count = oom_kills(cgroup)
    return None if count is None else OomWatch(cgroup, count)


def limit_bytes(cgroup: Path) -> int | None:
    for name in ("memory.max", "memory.limit_in_bytes"):
        try:
            raw = (cgroup / name).read_text().strip()
        except OSError:
            continue
        return None if raw == "max" or int(raw) >= 1 << 62 else int(raw)
    return None


def verdict(seen: OomWatch | None) -> str | None:
    """Words for the kernel's OOM kill in the watched cgroup since it was seen, else None."""
    if seen is None:
        return None
    now = oom_kills(seen.cgroup)
    if now is None or now <= seen.oom_kills:
        return None
    limit = limit_bytes(seen.cgroup)
    where = f"memory cgroup {seen.cgroup}" + (f", limit {_size(limit)}" if limit else "")
    return f"OOM: killed by the kernel for running out of memory ({where})"


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
