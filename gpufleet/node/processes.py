"""Start, find and stop backend processes on this node."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gpufleet.node.backend_env import backend_env

PORT_RANGE = (40000, 41000)
# A port handed out is claimed machine-wide for this long: the time between choosing a port and
# the backend binding it (engine probes, a container start) during which another node agent on
# the same host could otherwise choose it too. After it, the bound socket itself says "taken".
PORT_CLAIM_S = 120.0


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None if it does not exist.
    Used with the pid to recognise our process after pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # zombie: exited, waiting to be reaped
        return None
    return int(fields[19])


def is_alive(pid: int, start_time: int) -> bool:
    return process_start_time(pid) == start_time


#: Backends started by this process, kept so they can be reaped and their exit code read.
_children: dict[int, subprocess.Popen[bytes]] = {}
_exit_codes: dict[int, int] = {}


def reap_children() -> dict[int, int]:
    """Collect exited children (so they do not linger as zombies); returns pid -> exit code."""
    exited = {}
    for pid, proc in list(_children.items()):
        code = proc.poll()
        if code is not None:
            exited[pid] = _exit_codes[pid] = code
            del _children[pid]
    return exited


def exit_code(pid: int) -> int | None:
    """Exit code of a child of this process that has exited, if known."""
    reap_children()
    return _exit_codes.get(pid)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_claims_dir() -> Path:
    """Shared by every node agent of this user on this machine, whatever their homes."""
    return Path(tempfile.gettempdir()) / f"gpufleet-port-claims-{os.getuid()}"


def _claim(claims: Path, host: str, port: int, now: float) -> bool:
    """Atomically claim (host, port) unless another agent claimed it less than PORT_CLAIM_S ago."""
    marker = claims / f"{host}-{port}"
    try:
        if now - marker.stat().st_mtime < PORT_CLAIM_S:
            return False
        marker.unlink()
    except FileNotFoundError:
        pass
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False  # another agent claimed it between our check and now
    os.close(fd)
    return True


def allocate_port(host: str, taken: set[int], port_range: tuple[int, int] = PORT_RANGE,
                  claims: Path | None = None) -> int:
    """A port in ``port_range`` that is free on ``host``, not in ``taken`` (this node's own
    backends) and not handed out by another node agent on this machine in the last
    PORT_CLAIM_S seconds (two agents on one host would otherwise race for the lowest port)."""
    claims = claims or port_claims_dir()
    claims.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for port in range(*port_range):
        if port not in taken and port_is_free(host, port) and _claim(claims, host, port, now):
            return port
    raise RuntimeError(f"no free port in {port_range[0]}-{port_range[1]} on {host}")


def spawn(command: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> tuple[int, int]:
    # ``env``: the launch's variables, added to gpufleet.node.backend_env's minimal environment
    """Start a backend in its own session (so Ctrl-C of the agent does not reach it),
    with stdout and stderr appended to its log file. Returns (pid, start_time)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=backend_env(env),  # an allowlist of the node's variables, never its secrets
            cwd=cwd,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    for _ in range(100):
        start = process_start_time(proc.pid)
        if start is not None:
            return proc.pid, start
        if proc.poll() is not None:
            raise RuntimeError(f"backend exited immediately with code {proc.returncode}")
        time.sleep(0.01)
    raise RuntimeError("backend process did not appear in /proc")


def terminate(pid: int, start_time: int, grace: float = 10.0) -> bool:
    """SIGTERM the process group, then SIGKILL after `grace` seconds. Returns True
    if our process was running."""
    if not is_alive(pid, start_time):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap_children()
        if not is_alive(pid, start_time):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    for _ in range(100):
        reap_children()
        if not is_alive(pid, start_time):
            break
        time.sleep(0.02)
    return True
