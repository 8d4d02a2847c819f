"""Helpers for tests that start llama.cpp processes themselves: a free port, the end
of a log, and waiting for `/health`, failing with the log when the process dies."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

HEALTH_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(log: Path, n: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path, what: str = "server",
                 timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Until `GET {base}/health` answers 200; fail early, with the log, if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if httpx.get(f"{base}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} not healthy after {timeout} s:\n{tail(log)}")
