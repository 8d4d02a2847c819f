"""One log file per run of a backend, the previous runs kept, bounded.

A crash is only useful to diagnose if its log survives the restart that follows it, so
each launch moves the current log aside (``<id>-<name>.log`` → ``.log.1`` → ``.log.2`` …,
KEEP_PREVIOUS of them, each cut to its last MAX_PREVIOUS_BYTES) before the new run writes,
and the new log starts with gpufleet's own lines: which worker, which GPUs, and the
command line with secrets masked.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from gpufleet.settings import KEEP_PREVIOUS_LOGS

#: Previous runs kept per backend log (the issue asks for at least two).
KEEP_PREVIOUS = KEEP_PREVIOUS_LOGS
#: A previous run's log is cut to its last this many bytes when it is moved aside.
MAX_PREVIOUS_BYTES = 8 * 1024 * 1024
MASK = "****"
#: Flags whose value is a secret, and environment variable names that hold one.
_SECRET_FLAGS = ("--api-key", "--hf-token", "--token", "--password", "--secret", "--ssl-keyfile-password")
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


#: Lines noted for an instance's next run log before its backend starts (its weights: where they
#: came from, download progress), written under the header by the launch; bounded per instance.
MAX_NOTES = 40
_notes: dict[int, list[str]] = {}
_notes_lock = threading.Lock()


def note(instance_id: int, line: str) -> None:
    """Remember a line for the instance's next run log (the pull runs before the log exists:
    the launch rotates the previous run's log, then writes these under its header)."""
    with _notes_lock:
        lines = _notes.setdefault(instance_id, [])
        if len(lines) < MAX_NOTES:
            lines.append(line)
        else:
            lines[-1] = line  # keep the last word (the download's end) over the middle


def take_notes(instance_id: int) -> list[str]:
    with _notes_lock:
        return _notes.pop(instance_id, [])


def previous_path(current: Path, n: int) -> Path:
    """The log of the n-th run before the current one (n ≥ 1)."""
    if n < 1:
        raise ValueError(f"previous run number must be >= 1, got {n}")
    return current.with_name(f"{current.name}.{n}")


def rotate(current: Path, keep: int = KEEP_PREVIOUS, max_bytes: int = MAX_PREVIOUS_BYTES) -> Path | None:
    """Move the current log aside as ``.1`` (older ones shift, the oldest beyond ``keep``
    goes); returns where it went, or None when there was nothing to keep."""
    if not current.exists() or current.stat().st_size == 0:
        return None
    oldest = previous_path(current, keep)
    oldest.unlink(missing_ok=True)
    for n in range(keep - 1, 0, -1):
        older = previous_path(current, n)
        if older.exists():
            older.replace(previous_path(current, n + 1))
    moved = previous_path(current, 1)
    current.replace(moved)
    _cut_to_tail(moved, max_bytes)
    return moved


def _cut_to_tail(path: Path, max_bytes: int) -> None:
    size = path.stat().st_size
    if size <= max_bytes:
        return
    with path.open("rb") as f:
        f.seek(size - max_bytes)
        tail = f.read()
    note = f"[gpufleet] … {size - max_bytes} earlier bytes of this run were dropped to bound disk use\n".encode()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(note + tail)
    os.replace(tmp, path)


def mask_command(command: Sequence[str]) -> list[str]:
    """The command line as it may be shown: values of secret flags replaced by ****."""
    masked: list[str] = []
    hide_next = False
    for arg in command:
        if hide_next:
            masked.append(MASK)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in _SECRET_FLAGS:
            if eq:
                masked.append(f"{flag}={MASK}")
            else:
                masked.append(arg)
                hide_next = True
            continue
        masked.append(arg)
    return masked


def mask_env(env: dict[str, str]) -> dict[str, str]:
    return {k: (MASK if _SECRET_NAME.search(k) else v) for k, v in env.items()}


def header(*, instance: str, run: int, worker: str, runtime: str, gpus: Sequence[int], command: Sequence[str],
           env: dict[str, str], notes: Sequence[str] = ()) -> str:
    """gpufleet's lines at the start of a run's log (each prefixed ``[gpufleet]``)."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    shown_env = " ".join(f"{k}={v}" for k, v in sorted(mask_env(env).items()))
    lines = [
        f"starting on {worker} ({runtime}): {' '.join(mask_command(command))}",
        f"run {run} of {instance}, started {started}; GPUs {', '.join(map(str, gpus)) or 'none (CPU)'}",
    ]
    if shown_env:
        lines.append(f"environment: {shown_env}")
    lines += notes
    return "".join(f"[gpufleet] {line}\n" for line in lines)
