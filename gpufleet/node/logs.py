"""Reading backend log files: the last N lines, and following new output."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 64 * 1024


def tail_lines(path: Path, n: int) -> list[str]:
    """Last `n` lines without reading the whole file: scan backwards in chunks."""
    if n <= 0:
        return []
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(CHUNK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    return list(deque(lines, maxlen=n))


def read_log(
    path: Path,
    tail: int | None,
    follow: bool,
    keep_going: Callable[[], bool] = lambda: True,
    poll: float = 0.2,
) -> Iterator[str]:
    """Yield the log (or its last `tail` lines), then, if `follow`, new text as it is
    written, until the file disappears or `keep_going()` turns false with nothing new."""
    if tail is None:
        with path.open("r", errors="replace") as f:
            yield from f
            offset = f.tell()
    else:
        yield from tail_lines(path, tail)
        offset = path.stat().st_size
    while follow:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        if size < offset:  # truncated or rotated: start over
            offset = 0
        if size > offset:
            with path.open("r", errors="replace") as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            yield chunk
        elif not keep_going():
            return
        else:
            time.sleep(poll)
